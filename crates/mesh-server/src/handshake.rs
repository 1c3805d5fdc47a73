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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
    pub(crate) fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.headers_named(name).next()
    }

    /// Every value of a header that may appear more than once.
    pub(crate) fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
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

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = parse_head(&buf) {
            return Ok(request);
        }
    }
}

/// Reads a request head from the bytes received so far: `None` while it
/// is incomplete and under [`MAX_HEAD_BYTES`], the request otherwise (a
/// plain refusal for anything malformed or too large).
pub(crate) fn parse_head(buf: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => {
            Some(classify(&req, buf[len..].to_vec()))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => None,
        Ok(_) => Some(Request::Plain {
            status: 431,
            body: "request header too large\n",
        }),
        Err(_) => Some(Request::Plain {
            status: 400,
            body: "bad request\n",
        }),
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
    let mut keys = head.headers_named("sec-websocket-key");
    let first_two = (keys.next(), keys.next());
    drop(keys);
    let key = match first_two {
        (Some(key), None) if is_valid_key(key) => Some(key.to_string()),
        (None, _) => None,
        _ => {
            return Request::Plain {
                status: 400,
                body: "sec-websocket-key must be 16 bytes in base64\n",
            }
        }
    };
    match key {
        Some(key) => Request::Upgrade { head, key },
        None => Request::Plain {
            status: 400,
            body: "missing sec-websocket-key\n",
        },
    }
}

/// RFC 6455: the key is a random 16-byte value, base64-encoded.
fn is_valid_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|bytes| bytes.len() == 16)
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

    fn upgrade(extra: &str) -> Vec<u8> {
        format!(
            "GET /?a=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn status(request: Option<Request>) -> u16 {
        match request.expect("complete") {
            Request::Upgrade { .. } => 101,
            Request::Plain { status, .. } => status,
            Request::Metrics => 200,
        }
    }

    #[test]
    fn websocket_key_must_be_16_bytes_of_base64() {
        let good = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        assert_eq!(status(parse_head(&upgrade(good))), 101);
        for bad in [
            "Sec-WebSocket-Key: x\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=\r\n",
            "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "",
        ] {
            assert_eq!(status(parse_head(&upgrade(bad))), 400, "{bad:?}");
        }
    }

    #[test]
    fn head_is_bounded() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").is_none());
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(parse_head(long.as_bytes())), 431);
        assert_eq!(status(parse_head(b"\x00\x01 nonsense\r\n\r\n")), 400);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Arbitrary bytes never panic the parser, and the reader stops
        /// within one read of the head limit, whatever comes.
        #[test]
        fn arbitrary_heads_are_bounded(
            prefix in proptest::prelude::prop_oneof![
                proptest::prelude::Just(Vec::new()),
                proptest::prelude::Just(upgrade("")),
                proptest::prelude::Just(b"GET /healthz HTTP/1.1\r\n".to_vec()),
            ],
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3 * MAX_HEAD_BYTES),
        ) {
            let input = [prefix, bytes].concat();
            let _ = parse_head(&input);
            let mut rest: &[u8] = &input;
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = runtime.block_on(read_head(&mut rest));
            let consumed = input.len() - rest.len();
            proptest::prop_assert!(consumed < MAX_HEAD_BYTES + 1024, "read {consumed} bytes");
        }
    }

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
