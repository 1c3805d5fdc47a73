//! A WebSocket client written by hand, byte by byte, so that an attack can
//! send exactly what a hostile client would: any opcode, any declared
//! length, broken UTF-8, and never read.

use crate::common::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid `Sec-WebSocket-Key` (16 bytes in base64).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Text, close and ping opcodes.
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// Sends an upgrade request with `extra` header lines; the status line
/// of the answer and the stream (positioned after the answer's head).
pub async fn request(addr: &str, extra: &str) -> (String, TcpStream) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    request_on(tcp, extra).await
}

/// Like [`request`], on a connected stream.
pub async fn request_on(mut tcp: TcpStream, extra: &str) -> (String, TcpStream) {
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let status = read_head(&mut tcp).await;
    (status, tcp)
}

/// Reads an HTTP answer's head byte by byte (so that nothing after it is
/// consumed); its status line.
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("answer in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    head.lines().next().unwrap_or_default().to_string()
}

/// An upgraded connection, after the server's `mesh/assign-id` push.
pub async fn upgrade(addr: &str) -> TcpStream {
    upgrade_on(TcpStream::connect(addr).await.unwrap()).await
}

/// An upgraded connection with a tiny receive window: what the server
/// sends it backs up in the server, not in the kernel's buffers, as it
/// would from a client that reads nothing on a slow link.
pub async fn upgrade_tiny_window(addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    upgrade_on(socket.connect(addr.parse().unwrap()).await.unwrap()).await
}

async fn upgrade_on(tcp: TcpStream) -> TcpStream {
    let (status, mut tcp) = request_on(tcp, &format!("Sec-WebSocket-Key: {KEY}\r\n")).await;
    assert!(status.contains("101"), "upgrade refused: {status}");
    let (op, _) = read_frame(&mut tcp).await.expect("assign-id push");
    assert_eq!(op, TEXT);
    tcp
}

/// One client frame (masked, as clients must), with `payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A frame header declaring `len` payload bytes, without the payload.
pub fn header_declaring(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// Reads one server frame: its opcode and payload; `None` at end of stream.
pub async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .ok()?;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        tcp.read_exact(&mut ext).await.ok()?;
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        tcp.read_exact(&mut ext).await.ok()?;
        len = u64::from_be_bytes(ext);
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

/// Reads until the server's close frame; its code and reason (`None` if
/// the stream ended without one).
pub async fn close_of(tcp: &mut TcpStream) -> Option<(u16, String)> {
    loop {
        let (op, payload) = read_frame(tcp).await?;
        if op == CLOSE {
            // No payload: "no status code" (1005).
            if payload.len() < 2 {
                return Some((1005, String::new()));
            }
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
    }
}

/// Writes `bytes` over and over for `time` or until the server cuts the
/// connection; how many times they went out.
pub async fn flood(tcp: &mut TcpStream, bytes: &[u8], time: std::time::Duration) -> usize {
    let until = tokio::time::Instant::now() + time;
    let mut batch = Vec::with_capacity(bytes.len() * 64);
    for _ in 0..64 {
        batch.extend_from_slice(bytes);
    }
    let mut sent = 0;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, tcp.write_all(&batch)).await {
            Ok(Ok(())) => sent += 64,
            // Cut off, or the socket is full because the server stopped
            // reading: either way the flood is over.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}
