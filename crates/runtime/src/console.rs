//! Terminals: the OCI runtime allocates a container's terminal and sends its master end
//! over a console socket (`--console-socket`); whoever receives it reads the output,
//! writes the input and sets the size.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

/// Receives the terminal's master end the OCI runtime sends over its console socket.
pub fn receive_terminal(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 4096];
    recvmsg(
        stream,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::empty(),
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(std::io::Error::other("the OCI runtime sent no terminal"))
}

/// Sets a terminal's size (columns, rows).
pub fn set_size(terminal: &std::fs::File, width: u16, height: u16) {
    let _ = rustix::termios::tcsetwinsize(
        terminal,
        rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    );
}

/// A Kubernetes resize message (`{"Width":80,"Height":24}`, channel 4) as (width, height).
pub fn parse_resize(message: &[u8]) -> Option<(u16, u16)> {
    let size: serde_json::Value = serde_json::from_slice(message).ok()?;
    let dimension = |key: &str| size[key].as_u64().and_then(|v| u16::try_from(v).ok());
    Some((dimension("Width")?, dimension("Height")?))
}
