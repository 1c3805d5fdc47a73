//! Attacks on the transport: WebSocket frames, the handshake, and
//! connections themselves. None of them reaches the backend, so they run
//! on the memory backend only.

use crate::common::{BackendKind, Peer, WAIT};
use crate::raw::{self, frame, CLOSE, PING, TEXT};
use crate::{attack_time, with_bystander, ServerProcess};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const MEMORY: BackendKind = BackendKind::Memory;

/// Connects from a given loopback address (all of 127/8 is loopback), as
/// a client on another machine would.
async fn connect_from(ip: &str, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Upgrades `tcp`; the status line of the answer.
async fn upgrade_on(tcp: &mut TcpStream) -> String {
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
        raw::KEY
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    raw::read_head(tcp).await
}

#[tokio::test]
async fn ping_flood_from_a_client_that_never_reads() {
    let server = ServerProcess::start(MEMORY, &[]);
    let mut attacker = raw::upgrade_tiny_window(&server.addr).await;
    let ping = frame(PING, &[b'p'; 125]);
    let (sent, report) = with_bystander(&server, async {
        raw::flood(&mut attacker, &ping, attack_time()).await
    })
    .await;
    assert!(sent > 100, "the flood was under way ({sent} pings)");
    report.check("ping flood", MEMORY);
    // The server closed the connection: reading ends (in time) with its
    // close frame or with the reset that closing a socket with unread
    // input causes.
    if let Some(close) = raw::close_of(&mut attacker).await {
        assert_eq!(close, (1008, "too many control frames".into()));
    }
    server
        .wait_for_log(&["connection closed by server", "too many control frames"])
        .await;
}

#[tokio::test]
async fn ping_flood_within_a_lifted_budget_stays_bounded() {
    // With the budget lifted, what bounds the flood is tungstenite's write
    // buffer (64 KiB queue + 64 KiB here): once it is full, one pong waits
    // at a time instead of one per ping read. Unbounded, the debug build
    // gains several MiB in 2 s (the release build about 1 GiB in 5 s).
    let server = ServerProcess::start(
        MEMORY,
        &[
            "--max-control-frames",
            "4000000000",
            "--max-missed-pongs",
            "1000",
            "--max-queued-bytes",
            "65536",
        ],
    );
    let mut attacker = raw::upgrade_tiny_window(&server.addr).await;
    let ping = frame(PING, &[b'p'; 125]);
    let time = attack_time().max(Duration::from_secs(2));
    let (sent, report) = with_bystander(&server, async {
        raw::flood(&mut attacker, &ping, time).await
    })
    .await;
    assert!(sent > 1000, "the flood was under way ({sent} pings)");
    report.check("ping flood, budget lifted", MEMORY);
    assert!(
        report.growth_kib < 1024,
        "the server grew by {} KiB during the flood",
        report.growth_kib
    );
}

#[tokio::test]
async fn frame_over_the_hard_limit() {
    let server = ServerProcess::start(MEMORY, &["--max-frame-bytes", "4096"]);
    let mut attacker = raw::upgrade(&server.addr).await;
    let (close, report) = with_bystander(&server, async {
        let big = frame(TEXT, &vec![b'x'; 64 * 1024]);
        let _ = attacker.write_all(&big).await;
        raw::close_of(&mut attacker).await
    })
    .await;
    report.check("frame over 4x the limit", MEMORY);
    assert_eq!(close.map(|c| c.0), Some(1009));
}

#[tokio::test]
async fn declared_length_of_2_pow_63() {
    let server = ServerProcess::start(MEMORY, &[]);
    let (closes, report) = with_bystander(&server, async {
        let mut closes = Vec::new();
        for len in [1u64 << 62, (1 << 63) - 1, u64::MAX] {
            let mut attacker = raw::upgrade(&server.addr).await;
            attacker
                .write_all(&raw::header_declaring(TEXT, len))
                .await
                .unwrap();
            closes.push(raw::close_of(&mut attacker).await.map(|c| c.0));
        }
        closes
    })
    .await;
    report.check("declared 2^63-byte frame", MEMORY);
    // Refused from the header alone, never allocated.
    assert_eq!(closes, vec![Some(1009); 3]);
}

#[tokio::test]
async fn close_codes_say_what_happened() {
    let server = ServerProcess::start(MEMORY, &[]);

    let mut bad_utf8 = raw::upgrade(&server.addr).await;
    bad_utf8.write_all(&frame(TEXT, b"\xff\xfe")).await.unwrap();
    let close = raw::close_of(&mut bad_utf8).await;
    assert_eq!(close, Some((1007, "text frame is not UTF-8".into())));

    // Opcode 3 is reserved.
    let mut broken = raw::upgrade(&server.addr).await;
    broken.write_all(&frame(0x3, b"?")).await.unwrap();
    let close = raw::close_of(&mut broken).await;
    assert_eq!(close, Some((1002, "websocket protocol error".into())));

    let mut garbage = raw::upgrade(&server.addr).await;
    for _ in 0..101 {
        garbage.write_all(&frame(TEXT, b"not json")).await.unwrap();
    }
    let close = raw::close_of(&mut garbage).await;
    assert_eq!(close, Some((1008, "too many malformed frames".into())));

    // Gone without a word: logged as such, not as garbage.
    let vanished = Peer::connect(&server.url).await;
    let id = vanished.id.clone();
    drop(vanished);
    let line = server
        .wait_for_log(&[&format!("id={id}"), "connection closed"])
        .await;
    assert!(line.contains("gone without a close frame"), "{line}");

    // A polite close is a polite close.
    let mut polite = raw::upgrade(&server.addr).await;
    polite
        .write_all(&frame(CLOSE, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(raw::close_of(&mut polite).await.map(|c| c.0), Some(1000));
}

#[tokio::test]
async fn client_that_goes_silent_is_dropped() {
    // Half-open: the client's machine vanished, nothing more will come.
    let server = ServerProcess::start(MEMORY, &["--max-missed-pongs", "1"]);
    let mut silent = raw::upgrade(&server.addr).await;
    let (close, report) = with_bystander(&server, async { raw::close_of(&mut silent).await }).await;
    report.check("half-open client", MEMORY);
    assert_eq!(close, Some((1001, "unresponsive: missed pongs".into())));
}

#[tokio::test]
async fn slowloris_handshakes_time_out() {
    let server = ServerProcess::start(MEMORY, &["--handshake-timeout", "500ms"]);
    let (closed, report) = with_bystander(&server, async {
        let mut slow = Vec::new();
        for _ in 0..50 {
            let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            slow.push(tcp);
        }
        // One more header byte now and then, never the end of the head.
        let mut closed = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        while closed < slow.len() && tokio::time::Instant::now() < deadline {
            closed = 0;
            for tcp in &mut slow {
                if tcp.write_all(b"X").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed
    })
    .await;
    report.check("slowloris", MEMORY);
    assert_eq!(closed, 50, "every slow handshake was cut off");
}

#[tokio::test]
async fn connections_beyond_the_limits_get_503() {
    // The limit follows the file-descriptor limit: 128 - 32 reserved.
    let server = ServerProcess::start_with(MEMORY, &["--max-connections-per-ip", "0"], Some(128));
    let ((accepted, refused), report) = with_bystander(&server, async {
        let mut open = Vec::new();
        let mut refused = 0;
        for _ in 0..130 {
            let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
            let status = upgrade_on(&mut tcp).await;
            if status.contains("101") {
                open.push(tcp);
            } else {
                assert!(status.contains("503"), "{status}");
                refused += 1;
            }
        }
        (open, refused)
    })
    .await;
    report.check("connection flood (fd limit 128)", MEMORY);
    // 96 places, one of them the bystander's.
    assert_eq!(accepted.len(), 95);
    assert_eq!(refused, 35);
    assert!(server.log_lines(&["accept failed"]).is_empty());
    drop(accepted);
    // Places free up as the attackers leave.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
        if upgrade_on(&mut tcp).await.contains("101") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_place() {
    let server = ServerProcess::start(MEMORY, &["--max-connections-per-ip", "5"]);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut tcp = connect_from("127.0.0.3", &server.addr).await;
        assert!(upgrade_on(&mut tcp).await.contains("101"));
        held.push(tcp);
    }
    let mut sixth = connect_from("127.0.0.3", &server.addr).await;
    assert!(upgrade_on(&mut sixth).await.contains("503"));
    let mut other = connect_from("127.0.0.4", &server.addr).await;
    assert!(upgrade_on(&mut other).await.contains("101"));
}

#[tokio::test]
async fn handshake_is_strict() {
    let server = ServerProcess::start(MEMORY, &["--allow-origin", "http://app.example"]);
    for key in ["x", "dGhlIHNhbXBsZSBub25jZXg=", "not base64 at all!!!!!=="] {
        let (status, _) =
            raw::request(&server.addr, &format!("Sec-WebSocket-Key: {key}\r\n")).await;
        assert!(status.contains("400"), "key {key:?}: {status}");
    }
    let key = format!("Sec-WebSocket-Key: {}\r\n", raw::KEY);
    let (status, _) = raw::request(
        &server.addr,
        &format!("{key}Origin: http://app.example\r\nOrigin: http://evil.example\r\n"),
    )
    .await;
    assert!(status.contains("403"), "two origins: {status}");
    let (status, _) = raw::request(
        &server.addr,
        &format!("{key}Origin: http://app.example\r\n"),
    )
    .await;
    assert!(status.contains("101"), "{status}");
}
