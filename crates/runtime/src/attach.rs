//! Attach: a container's standard streams belong to its monitor (the runtime may restart
//! while the container runs), so the monitor serves them on a Unix socket in the
//! container directory (`attach.sock`) and the streaming server connects there for
//! each Attach. Both directions carry frames: a kind byte, a big-endian u32 length,
//! the payload. From the monitor: output (`STDOUT`, `STDERR`) as the container writes
//! it, from the moment the client connects. To the monitor: `INPUT` (bytes for the
//! container's stdin or terminal), `INPUT_END` (the client's stdin ended: closes the
//! container's stdin when it was created `stdin_once`), `RESIZE` (u16 width, u16 height).
//! A client too slow to keep up is dropped rather than ever holding the container back.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SOCKET: &str = "attach.sock";
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const INPUT: u8 = 0;
pub const INPUT_END: u8 = 3;
pub const RESIZE: u8 = 4;
/// Frames are at most this long (the monitor reads at most 32 KiB at a time).
pub const MAX_FRAME: usize = 1 << 20;
/// Output frames queued for one client before it counts as gone.
const QUEUE: usize = 1024;

/// One frame.
pub fn encode(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(data.len() + 5);
    frame.push(kind);
    frame.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// Reads one frame; `None` at the end of the stream or on a malformed frame.
pub fn read_frame(reader: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data).ok()?;
    Some((header[0], data))
}

/// The async twin of [`read_frame`], for the streaming server.
pub async fn read_frame_async(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 5];
    reader.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data).await.ok()?;
    Some((header[0], data))
}

/// The monitor's side: the attached clients, the container's input and terminal.
pub struct Hub {
    clients: Mutex<Clients>,
    /// The write end of the container's stdin pipe, or its terminal's master end.
    input: Mutex<Option<File>>,
    terminal: Option<File>,
    stdin_once: bool,
}

#[derive(Default)]
struct Clients {
    senders: Vec<SyncSender<Arc<Vec<u8>>>>,
    writers: Vec<JoinHandle<()>>,
    closed: bool,
}

impl Hub {
    pub fn new(input: Option<File>, terminal: Option<File>, stdin_once: bool) -> Arc<Hub> {
        Arc::new(Hub {
            clients: Mutex::new(Clients::default()),
            input: Mutex::new(input),
            terminal,
            stdin_once,
        })
    }

    /// Serves attach connections on `listener` until the process ends.
    pub fn serve(self: &Arc<Hub>, listener: UnixListener) {
        let hub = self.clone();
        let _ = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => hub.connect(stream),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            });
    }

    fn connect(self: &Arc<Hub>, stream: UnixStream) {
        let Ok(mut reader) = stream.try_clone() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(QUEUE);
        {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients.closed {
                return;
            }
            let mut writer = stream;
            let handle = std::thread::spawn(move || {
                while let Ok(frame) = rx.recv() {
                    if writer.write_all(&frame).is_err() {
                        break;
                    }
                }
                let _ = writer.shutdown(std::net::Shutdown::Both);
            });
            clients.senders.push(tx);
            clients.writers.push(handle);
        }
        let hub = self.clone();
        std::thread::spawn(move || {
            while let Some((kind, data)) = read_frame(&mut reader) {
                match kind {
                    INPUT => hub.write_input(&data),
                    INPUT_END if hub.stdin_once => {
                        // Dropping the write end is the container's end of input.
                        hub.input.lock().unwrap_or_else(|p| p.into_inner()).take();
                    }
                    RESIZE if data.len() == 4 => {
                        let width = u16::from_be_bytes([data[0], data[1]]);
                        let height = u16::from_be_bytes([data[2], data[3]]);
                        if let Some(terminal) = &hub.terminal {
                            crate::console::set_size(terminal, width, height);
                        }
                    }
                    _ => {}
                }
            }
        });
    }

    fn write_input(&self, data: &[u8]) {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = input.as_mut()
            && file.write_all(data).is_err()
        {
            // Nobody reads the container's stdin any more.
            input.take();
        }
    }

    /// Output the container wrote, to every attached client.
    pub fn output(&self, stream: u8, data: &[u8]) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.senders.is_empty() {
            return;
        }
        let frame = Arc::new(encode(stream, data));
        clients
            .senders
            .retain(|client| match client.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            });
    }

    /// The container is gone: what is queued reaches the clients (for up to `grace`),
    /// then their connections end.
    pub fn close(&self, grace: Duration) {
        let writers = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients.closed = true;
            clients.senders.clear();
            std::mem::take(&mut clients.writers)
        };
        let deadline = Instant::now() + grace;
        for writer in writers {
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut bytes = encode(STDOUT, b"hello");
        bytes.extend(encode(RESIZE, &[0, 80, 0, 24]));
        let mut reader = bytes.as_slice();
        assert_eq!(read_frame(&mut reader), Some((STDOUT, b"hello".to_vec())));
        assert_eq!(read_frame(&mut reader), Some((RESIZE, vec![0, 80, 0, 24])));
        assert_eq!(read_frame(&mut reader), None);
        let mut huge = vec![INPUT];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(read_frame(&mut huge.as_slice()), None);
    }

    #[test]
    fn output_reaches_attached_clients_and_input_reaches_the_container() {
        let (input_read, input_write) = std::io::pipe().expect("pipe");
        let hub = Hub::new(
            Some(File::from(std::os::fd::OwnedFd::from(input_write))),
            None,
            true,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SOCKET);
        hub.serve(UnixListener::bind(&path).expect("bind"));
        let mut client = UnixStream::connect(&path).expect("connect");
        // The client is registered once its connection is accepted.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.clients.lock().expect("lock").senders.is_empty() {
            assert!(Instant::now() < deadline, "the client was never accepted");
            std::thread::sleep(Duration::from_millis(2));
        }
        hub.output(STDERR, b"oops");
        assert_eq!(read_frame(&mut client), Some((STDERR, b"oops".to_vec())));
        client.write_all(&encode(INPUT, b"typed")).expect("input");
        client.write_all(&encode(INPUT_END, b"")).expect("end");
        let mut typed = String::new();
        (&input_read)
            .read_to_string(&mut typed)
            .expect("stdin ends");
        assert_eq!(typed, "typed");
        hub.close(Duration::from_secs(1));
        assert_eq!(
            read_frame(&mut client),
            None,
            "closed after the container ends"
        );
    }
}
