//! SPDY/3.1 framing, as much as Kubernetes' streaming protocols use: `kubectl
//! port-forward` (and older exec clients) multiplex their streams over one upgraded
//! connection with it. The spec is draft-mbelshe-httpbis-spdy-00 (SPDY/3) plus 3.1's
//! session flow control, which Kubernetes' Go implementation (spdystream) neither sends
//! nor honours, so neither do we.
//!
//! Frames are read and written whole; header blocks go through one zlib stream per
//! direction, primed with the SPDY/3 dictionary, flushed (Z_SYNC_FLUSH) after every
//! block, as the spec requires.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Control frame types.
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
/// FLAG_FIN on data and stream frames.
pub const FIN: u8 = 0x01;
/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const FLOW_CONTROL_ERROR: u32 = 7;

const VERSION: u16 = 3;
/// The largest frame we accept (the format allows 16 MiB); spdystream writes at most 32 KiB of data per frame.
const MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block we accept.
const MAX_HEADERS: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

fn protocol(message: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(message.into())
}

/// One frame as read off the wire.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// SYN_STREAM, SYN_REPLY or HEADERS: a stream and its (still compressed) headers.
    Stream {
        kind: u16,
        stream: u32,
        flags: u8,
        block: Vec<u8>,
    },
    Reset {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, WINDOW_UPDATE and anything newer: ignored, as the spec asks.
    Other(u16),
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, SpdyError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| protocol("control frame too short"))
}

/// Reads one frame; `None` at a clean end of the connection.
pub async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match reader.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let length = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
    if length > MAX_FRAME {
        return Err(protocol(format!("frame of {length} bytes is too large")));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await?;
    if head[0] & 0x80 == 0 {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Some(Frame::Data {
            stream,
            flags,
            data: payload,
        }));
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(protocol(format!("unsupported SPDY version {version}")));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let stream = |p: &[u8]| u32_at(p, 0).map(|s| s & 0x7fff_ffff);
    Ok(Some(match kind {
        SYN_STREAM => {
            let id = stream(&payload)?;
            if payload.len() < 10 {
                return Err(protocol("SYN_STREAM too short"));
            }
            Frame::Stream {
                kind,
                stream: id,
                flags,
                block: payload[10..].to_vec(),
            }
        }
        SYN_REPLY | HEADERS => Frame::Stream {
            kind,
            stream: stream(&payload)?,
            flags,
            block: payload.get(4..).unwrap_or_default().to_vec(),
        },
        RST_STREAM => Frame::Reset {
            stream: stream(&payload)?,
            status: u32_at(&payload, 4)?,
        },
        PING => Frame::Ping(u32_at(&payload, 0)?),
        GOAWAY => Frame::GoAway,
        other => Frame::Other(other),
    }))
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes()[1..]);
    frame.extend_from_slice(payload);
    frame
}

/// A DATA frame (at most 16 MiB - 1; callers send far less).
pub fn data(stream: u32, flags: u8, bytes: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(bytes.len() + 8);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_be_bytes()[1..]);
    frame.extend_from_slice(bytes);
    frame
}

pub fn reset(stream: u32, status: u32) -> Vec<u8> {
    let mut payload = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    payload.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &payload)
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// The SPDY/3 header compression dictionary: length-prefixed header names and values,
/// then a run of common status lines, dates and media types (the spec's section 2.6.10.1).
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        const WORDS: [&str; 66] = [
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
            "",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416",
            "417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server ",
            "Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug ",
            "Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/",
            "html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/",
            "plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut bytes = Vec::new();
        for word in WORDS.iter().filter(|w| !w.is_empty()) {
            bytes.extend_from_slice(&u32::try_from(word.len()).unwrap_or(0).to_be_bytes());
            bytes.extend_from_slice(word.as_bytes());
        }
        bytes.extend_from_slice(TAIL.as_bytes());
        bytes
    });
    &DICTIONARY
}

/// The two header compression contexts of one connection.
pub struct Headers {
    inflater: Decompress,
    deflater: Compress,
}

impl Default for Headers {
    fn default() -> Headers {
        Headers::new()
    }
}

impl Headers {
    pub fn new() -> Headers {
        let mut deflater = Compress::new(Compression::best(), true);
        // Cannot fail on a fresh stream.
        let _ = deflater.set_dictionary(dictionary());
        Headers {
            inflater: Decompress::new(true),
            deflater,
        }
    }

    /// The name/value pairs of a compressed header block (names lowercase, as SPDY
    /// sends them; several values of one name stay NUL-separated).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let plain = self.inflate(block)?;
        let mut at = 0usize;
        let mut take = |len: usize| -> Result<&[u8], SpdyError> {
            let slice = plain
                .get(at..at + len)
                .ok_or_else(|| protocol("header block truncated"))?;
            at += len;
            Ok(slice)
        };
        let count = u32::from_be_bytes(take(4)?.try_into().unwrap_or_default());
        let mut pairs = Vec::new();
        for _ in 0..count {
            let mut next = || -> Result<String, SpdyError> {
                let len = u32::from_be_bytes(take(4)?.try_into().unwrap_or_default());
                let bytes = take(usize::try_from(len).unwrap_or(usize::MAX))?;
                Ok(String::from_utf8_lossy(bytes).into_owned())
            };
            let name = next()?;
            let value = next()?;
            pairs.push((name.to_ascii_lowercase(), value));
        }
        Ok(pairs)
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before = self.inflater.total_in();
            let result = self
                .inflater
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = usize::try_from(self.inflater.total_in() - before).unwrap_or(0);
            input = &input[consumed.min(input.len())..];
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflater
                        .set_dictionary(dictionary())
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            }
            if out.len() > MAX_HEADERS {
                return Err(protocol("header block too large"));
            }
            if out.len() < out.capacity() {
                if input.is_empty() {
                    return Ok(out);
                }
                if consumed == 0 {
                    return Err(protocol("header block does not decompress"));
                }
            }
            out.reserve(4096);
        }
    }

    /// Compresses `pairs` into a header block.
    pub fn encode(&mut self, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = Vec::new();
        let len = |n: usize| u32::try_from(n).unwrap_or(0).to_be_bytes();
        plain.extend_from_slice(&len(pairs.len()));
        for (name, value) in pairs {
            plain.extend_from_slice(&len(name.len()));
            plain.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            plain.extend_from_slice(&len(value.len()));
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            let before = self.deflater.total_in();
            if self
                .deflater
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let consumed = usize::try_from(self.deflater.total_in() - before).unwrap_or(0);
            input = &input[consumed.min(input.len())..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(256);
        }
        out
    }

    /// A SYN_STREAM (the client side of a stream: tests and peers).
    pub fn syn_stream(&mut self, stream: u32, flags: u8, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut payload = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend(self.encode(pairs));
        control(SYN_STREAM, flags, &payload)
    }

    /// A SYN_REPLY accepting `stream`.
    pub fn syn_reply(&mut self, stream: u32, flags: u8, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut payload = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend(self.encode(pairs));
        control(SYN_REPLY, flags, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specs() {
        // Its length and the adler32 zlib announces for it (DICTID).
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        let mut deflater = Compress::new(Compression::best(), true);
        deflater.set_dictionary(dict).expect("dictionary");
        let mut out = Vec::with_capacity(64);
        deflater
            .compress_vec(b"x", &mut out, FlushCompress::Sync)
            .expect("compress");
        assert_eq!(&out[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn header_blocks_survive_a_connection_of_frames() {
        let (mut client, mut server) = (Headers::new(), Headers::new());
        for i in 0..5 {
            let port = (8000 + i).to_string();
            let pairs = [
                ("streamType", "data"),
                ("port", port.as_str()),
                ("requestID", "7"),
            ];
            let block = client.encode(&pairs);
            let decoded = server.decode(&block).expect("decode");
            assert_eq!(
                decoded,
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), port.clone()),
                    ("requestid".to_string(), "7".to_string()),
                ]
            );
        }
        assert!(
            server
                .decode(&client.encode(&[]))
                .expect("empty")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn frames_read_back_as_written() {
        let mut headers = Headers::new();
        let mut wire = headers.syn_stream(3, FIN, &[("a", "b")]);
        wire.extend(data(3, FIN, b"hello"));
        wire.extend(reset(5, PROTOCOL_ERROR));
        wire.extend(ping(7));
        let mut reader = wire.as_slice();
        let mut peer = Headers::new();
        match read_frame(&mut reader).await.expect("read") {
            Some(Frame::Stream {
                kind: SYN_STREAM,
                stream: 3,
                flags: FIN,
                block,
            }) => assert_eq!(peer.decode(&block).expect("headers")[0].1, "b"),
            other => panic!("{other:?}"),
        }
        let expected = [
            Frame::Data {
                stream: 3,
                flags: FIN,
                data: b"hello".to_vec(),
            },
            Frame::Reset {
                stream: 5,
                status: PROTOCOL_ERROR,
            },
            Frame::Ping(7),
        ];
        for frame in expected {
            assert_eq!(read_frame(&mut reader).await.expect("read"), Some(frame));
        }
        assert_eq!(read_frame(&mut reader).await.expect("end"), None);
    }

    #[tokio::test]
    async fn bad_frames_are_refused() {
        let mut huge = data(1, 0, b"");
        huge[5] = 0xff;
        assert!(read_frame(&mut huge.as_slice()).await.is_err());
        let mut v2 = ping(1);
        v2[1] = 2;
        assert!(read_frame(&mut v2.as_slice()).await.is_err());
        let mut headers = Headers::new();
        assert!(headers.decode(b"not zlib at all").is_err());
    }
}
