//! The HTTP side of a new TCP connection: read the request head, answer
//! `GET /healthz` and `GET /metrics`, check the `Origin`, and complete the
//! WebSocket upgrade.
//!
//! We parse the head ourselves rather than through tungstenite's
//! `accept_hdr_async`, because we must answer plain HTTP (health checks)
//! on the same port and run an *async* hook before deciding whether to
//! upgrade.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head we read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most headers we parse.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes read past the head (the client may send frames right away).
    pub(crate) leftover: Vec<u8>,
}

impl RequestHead {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// What the request asks for.
pub(crate) enum Request {
    /// A WebSocket upgrade; the key to answer with.
    Upgrade { head: RequestHead, key: String },
    /// A plain HTTP request, already decided: the status and body to send.
    Plain { status: u16, body: &'static str },
    /// `GET /metrics`: the caller renders them.
    Metrics,
}

/// Reads and classifies the request head, within `timeout`.
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<Request> {
    match tokio::time::timeout(timeout, read_head(stream)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "handshake timed out",
        )),
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => return Ok(classify(&req, buf[len..].to_vec())),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                return Ok(Request::Plain {
                    status: 431,
                    body: "request header too large\n",
                })
            }
            Err(_) => {
                return Ok(Request::Plain {
                    status: 400,
                    body: "bad request\n",
                })
            }
        }
    }
}

fn classify(req: &httparse::Request<'_, '_>, leftover: Vec<u8>) -> Request {
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let head = RequestHead {
        path: path.to_string(),
        query: parse_query(query),
        headers,
        leftover,
    };
    if req.method != Some("GET") {
        return Request::Plain {
            status: 405,
            body: "method not allowed\n",
        };
    }
    let is_upgrade = head.header_has_token("upgrade", "websocket")
        && head.header_has_token("connection", "upgrade");
    if !is_upgrade {
        return if head.path == "/healthz" {
            Request::Plain {
                status: 200,
                body: "ok\n",
            }
        } else if head.path == "/metrics" {
            Request::Metrics
        } else {
            Request::Plain {
                status: 426,
                body: "this is a Mesh WebSocket server\n",
            }
        };
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Request::Plain {
            status: 400,
            body: "unsupported websocket version\n",
        };
    }
    match head.header("sec-websocket-key") {
        Some(key) if !key.is_empty() => {
            let key = key.to_string();
            Request::Upgrade { head, key }
        }
        _ => Request::Plain {
            status: 400,
            body: "missing sec-websocket-key\n",
        },
    }
}

/// Writes a complete plain HTTP response and closes our side.
pub(crate) async fn respond(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
) -> std::io::Result<()> {
    respond_typed(stream, status, "text/plain", body).await
}

/// Writes a complete plain HTTP response with this content type and closes
/// our side.
pub(crate) async fn respond_typed(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Writes the `101 Switching Protocols` answer to an upgrade.
pub(crate) async fn accept_upgrade(stream: &mut TcpStream, key: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Splits and percent-decodes a query string (`+` is a space).
pub(crate) fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_decoded() {
        let q = parse_query("userId=u1&username=Ada+L%C3%B6w&flag&bad=%zz&end=%4");
        assert_eq!(q["userId"], "u1");
        assert_eq!(q["username"], "Ada Löw");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
