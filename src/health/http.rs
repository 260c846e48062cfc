//! The tcp and http probes: a connect (optionally from a given source address) and a minimal
//! HTTP/1.1 GET with `Connection: close`, reading at most [`MAX_RESPONSE`] bytes.
//!
//! Hand-written on tokio's `TcpStream` (response heads parsed by `httparse`) rather than an
//! HTTP client: a probe needs one request, no pooling, no TLS, no redirects, and every byte it
//! reads bounded. The caller bounds the whole probe with the check's timeout.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{Passed, ProbeError, ProbeTarget};
use crate::config::{HttpProbe, StatusRange, TcpProbe};

/// Most of the answer read: enough for a status page, bounded so a huge or endless body
/// cannot cost memory.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// More headers than this is not an answer from the service we are checking.
const MAX_HEADERS: usize = 64;
const READ_CHUNK: usize = 8 * 1024;

pub(super) async fn tcp(probe: &TcpProbe, target: &ProbeTarget) -> Result<Passed, ProbeError> {
    let stream = connect(SocketAddr::new(target.ip, probe.port), target.source).await?;
    // Dropping the stream closes it: a completed handshake is all a tcp check asks.
    drop(stream);
    Ok(Passed::Connected)
}

/// Connects to `addr`, first binding to `source` (port chosen by the kernel) when given.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ProbeError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ProbeError::Connect {
        addr,
        error: e.to_string(),
    })?;
    if let Some(source) = source {
        if source.is_ipv4() != addr.is_ipv4() {
            return Err(ProbeError::Bind {
                local: source,
                error: format!("not the same IP version as the target {addr}"),
            });
        }
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| ProbeError::Bind {
                local: source,
                error: e.to_string(),
            })?;
    }
    socket.connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ProbeError::Refused { addr }
        } else {
            ProbeError::Connect {
                addr,
                error: e.to_string(),
            }
        }
    })
}

/// The `Host` header: the literal address, with the port unless it is 80.
fn host_header(addr: SocketAddr) -> String {
    match (addr.port(), addr.ip()) {
        (80, IpAddr::V4(ip)) => ip.to_string(),
        (80, IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => addr.to_string(),
    }
}

pub(super) async fn http(probe: &HttpProbe, target: &ProbeTarget) -> Result<Passed, ProbeError> {
    let addr = SocketAddr::new(target.ip, probe.port);
    let mut stream = connect(addr, target.source).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: enipeer-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        probe.path,
        host_header(addr),
        env!("CARGO_PKG_VERSION"),
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_error("sending the request", e))?;
    let answer = read_answer(&mut stream, probe.body_contains.is_some()).await?;
    judge(&answer, probe.status, probe.body_contains.as_deref())
}

/// What was read of one answer.
struct Answer {
    bytes: Vec<u8>,
    head: Option<Head>,
    /// The server closed the connection (the whole answer is in `bytes` unless it hit the cap).
    eof: bool,
}

struct Head {
    status: u16,
    body_start: usize,
    framing: Framing,
}

enum Framing {
    Length(usize),
    Chunked,
    /// Neither header: the body ends when the server closes (what `Connection: close` asks).
    UntilClose,
}

/// Reads until the head is in (and, when the body matters, until the body is complete, the
/// server closes, or [`MAX_RESPONSE`] bytes are in).
async fn read_answer(stream: &mut TcpStream, need_body: bool) -> Result<Answer, ProbeError> {
    let mut bytes = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut head = None;
    let mut eof = false;
    // Where to resume looking for the end of the head, so a server trickling single bytes
    // costs linear time, not quadratic.
    let mut scanned: usize = 0;
    loop {
        if head.is_none() {
            let from = scanned.saturating_sub(3);
            if bytes[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                head = parse_head(&bytes)?;
            }
            scanned = bytes.len();
        }
        if let Some(h) = &head {
            if !need_body || body_complete(h, &bytes) {
                break;
            }
        }
        let room = MAX_RESPONSE - bytes.len();
        if room == 0 {
            break;
        }
        let n = stream
            .read(&mut chunk[..room.min(READ_CHUNK)])
            .await
            .map_err(|e| io_error("reading the answer", e))?;
        if n == 0 {
            eof = true;
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    if head.is_none() {
        // A head cut off by EOF or the cap: httparse says what is wrong with what we have.
        head = parse_head(&bytes)?;
    }
    Ok(Answer { bytes, head, eof })
}

fn parse_head(bytes: &[u8]) -> Result<Option<Head>, ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let body_start = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ProbeError::Malformed {
                reason: format!("not an HTTP answer: {e}"),
            })
        }
    };
    let status = response.code.unwrap_or_default();
    let mut framing = Framing::UntilClose;
    for h in response.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
            break;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            if let Ok(n) = value.trim().parse::<usize>() {
                framing = Framing::Length(n);
            }
        }
    }
    Ok(Some(Head {
        status,
        body_start,
        framing,
    }))
}

fn body_complete(head: &Head, bytes: &[u8]) -> bool {
    let body = &bytes[head.body_start.min(bytes.len())..];
    match head.framing {
        Framing::Length(n) => body.len() >= n,
        // The last chunk without trailers; with trailers we read on until the server closes.
        Framing::Chunked => body.ends_with(b"0\r\n\r\n"),
        Framing::UntilClose => false,
    }
}

/// The body as sent, chunked encoding removed; a cut-off chunk contributes what arrived.
fn body(head: &Head, bytes: &[u8]) -> Vec<u8> {
    let raw = &bytes[head.body_start.min(bytes.len())..];
    match head.framing {
        Framing::Length(n) => raw[..n.min(raw.len())].to_vec(),
        Framing::UntilClose => raw.to_vec(),
        Framing::Chunked => {
            let mut out = Vec::with_capacity(raw.len());
            let mut rest = raw;
            // Each round consumes at least the size line, so this ends.
            while let Ok(httparse::Status::Complete((used, size))) =
                httparse::parse_chunk_size(rest)
            {
                let data = &rest[used..];
                let take = usize::try_from(size).unwrap_or(usize::MAX).min(data.len());
                if take == 0 {
                    break;
                }
                out.extend_from_slice(&data[..take]);
                // Skip the CRLF after the chunk data (absent when cut off: then we are done).
                rest = data.get(take + 2..).unwrap_or_default();
            }
            out
        }
    }
}

fn judge(answer: &Answer, want: StatusRange, needle: Option<&str>) -> Result<Passed, ProbeError> {
    let Some(head) = &answer.head else {
        let reason = if answer.eof {
            "the connection closed before the answer's head ended"
        } else {
            "no end of the answer's head in the first 64 KiB"
        };
        return Err(ProbeError::Malformed {
            reason: reason.to_owned(),
        });
    };
    if !want.contains(head.status) {
        return Err(ProbeError::Status {
            got: head.status,
            want,
        });
    }
    if let Some(needle) = needle {
        let body = body(head, &answer.bytes);
        let found = body
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes());
        if !found {
            return Err(ProbeError::BodyMissing {
                needle: needle.to_owned(),
                read: body.len(),
                truncated: answer.bytes.len() >= MAX_RESPONSE,
            });
        }
    }
    Ok(Passed::Http {
        status: head.status,
    })
}

fn io_error(stage: &'static str, e: std::io::Error) -> ProbeError {
    ProbeError::Io {
        stage,
        error: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &[u8]) -> Answer {
        Answer {
            bytes: text.to_vec(),
            head: parse_head(text).unwrap(),
            eof: true,
        }
    }

    #[test]
    fn chunked_body_is_decoded_before_searching() {
        // "ready" is split across two chunks: found only once the framing is removed.
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n2\r\ndy\r\n0\r\n\r\n";
        let a = answer(text);
        let head = a.head.as_ref().unwrap();
        assert!(body_complete(head, &a.bytes));
        assert_eq!(body(head, &a.bytes), b"ready");
        assert_eq!(
            judge(&a, StatusRange::DEFAULT, Some("ready")),
            Ok(Passed::Http { status: 200 })
        );
    }

    #[test]
    fn content_length_bounds_the_body() {
        let a = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokready");
        assert!(matches!(
            judge(&a, StatusRange::DEFAULT, Some("ready")),
            Err(ProbeError::BodyMissing { read: 2, .. })
        ));
    }

    #[test]
    fn garbage_and_cut_off_heads_are_malformed() {
        assert!(matches!(
            parse_head(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
            Err(ProbeError::Malformed { .. })
        ));
        let a = Answer {
            bytes: b"HTTP/1.1 200 OK\r\nServer: x".to_vec(),
            head: None,
            eof: true,
        };
        assert_eq!(
            judge(&a, StatusRange::DEFAULT, None).map_err(|e| e.kind()),
            Err("malformed")
        );
    }

    #[test]
    fn host_header_brackets_ipv6_and_omits_port_80() {
        assert_eq!(host_header("198.18.0.5:80".parse().unwrap()), "198.18.0.5");
        assert_eq!(
            host_header("198.18.0.5:8080".parse().unwrap()),
            "198.18.0.5:8080"
        );
        assert_eq!(
            host_header("[2001:db8::1]:80".parse().unwrap()),
            "[2001:db8::1]"
        );
    }
}
