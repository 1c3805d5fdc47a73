//! Everything the server decodes from the network, on arbitrary input:
//! WebSocket frames (tungstenite under the server's limits) and Mesh
//! envelopes (`Frame::decode`). Nothing panics, and what is allocated is
//! bounded by the limits: a WebSocket frame of any declared length costs
//! at most the frame limit and the bounded buffers; an envelope over the
//! limit costs at most the limit, one within it a fixed multiple of its
//! length (the parsed JSON tree). The handshake parser's properties are in
//! its unit tests.
//!
//! Allocations are counted per thread by this test binary's allocator, so
//! tests running in parallel do not see each other's.

use mesh_protocol::Frame;
use mesh_server::Limits;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + layout.size();
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes live at once while `f` runs, over what was live before.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// JSON-ish text: the pieces a hostile frame is made of, in any order.
fn jsonish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{"),
        Just("}"),
        Just("["),
        Just("]"),
        Just(":"),
        Just(","),
        Just("\"id\""),
        Just("\"command\""),
        Just("\"payload\""),
        Just("\"mesh/noop\""),
        Just("\"a\""),
        Just("7"),
        Just("-1"),
        Just("1e999"),
        Just("18446744073709551616"),
        Just("\"\\ud800\""),
        Just("\"\\u00e9\""),
        Just("null"),
        Just("true"),
        Just(" "),
    ];
    prop::collection::vec(piece, 0..120).prop_map(|pieces| pieces.concat())
}

/// A well-formed envelope around arbitrary JSON-ish payload text.
fn envelope() -> impl Strategy<Value = String> {
    (any::<u64>(), jsonish()).prop_map(|(id, payload)| {
        format!(r#"{{"id":{id},"command":"mesh/noop","payload":{payload}}}"#)
    })
}

const LIMIT: usize = 512;

/// Allowed peak for a frame within the limit: the JSON tree of the worst
/// text (`[[],[],...]`: a 32-byte value per 3 bytes, in growing vectors).
fn tree_bound(len: usize) -> usize {
    32 * len + 4096
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let (decoded, peak) = peak_allocation(|| Frame::decode(text, LIMIT));
    if text.len() > LIMIT {
        prop_assert!(
            peak <= LIMIT + 1024,
            "{peak} bytes to refuse {} bytes",
            text.len()
        );
    } else {
        prop_assert!(peak <= tree_bound(text.len()), "{peak} bytes for {text:?}");
    }
    if let Ok(frame) = decoded {
        prop_assert_eq!(Frame::decode(&frame.encode(), usize::MAX), Ok(frame));
    }
    Ok(())
}

proptest! {
    // Enough cases to find a panic path, few enough for `npm test`.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn jsonish_text_never_panics(text in jsonish()) {
        check(&text)?;
    }

    #[test]
    fn envelopes_with_hostile_payloads(text in envelope()) {
        check(&text)?;
        // The id comes first, so any refusal can be answered.
        if let Err(e) = Frame::decode(&text, LIMIT) {
            prop_assert!(e.request_id().is_some(), "{e} loses the id of {text:?}");
        }
    }
}

/// Bytes from the network, read in small pieces; writes are discarded.
struct Wire {
    input: Vec<u8>,
    at: usize,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.input.len() - self.at).min(1500);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const FRAME_LIMIT: usize = 1024;

fn server_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_frame_bytes = FRAME_LIMIT;
    limits.max_queued_bytes = 4096;
    limits
}

/// One client frame: any opcode and flags, masked or not, with a declared
/// length that may be a lie (up to 2^64 - 1) and any payload bytes.
fn ws_frame() -> impl Strategy<Value = Vec<u8>> {
    let declared = prop_oneof![
        0u64..200,
        Just(126),
        Just(65_535),
        Just(1 << 32),
        Just(1 << 63),
        Just(u64::MAX),
    ];
    (
        any::<u8>(),
        any::<bool>(),
        declared,
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(first, masked, declared, payload)| {
            let mask_bit = if masked { 0x80 } else { 0 };
            let mut out = vec![first];
            if declared < 126 {
                out.push(mask_bit | declared as u8);
            } else if declared <= 0xffff {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(declared as u16).to_be_bytes());
            } else {
                out.push(mask_bit | 127);
                out.extend_from_slice(&declared.to_be_bytes());
            }
            if masked {
                out.extend_from_slice(&[1, 2, 3, 4]);
            }
            out.extend_from_slice(&payload);
            out
        })
}

/// Reads messages until the input ends or is refused.
fn read_all(input: Vec<u8>) -> usize {
    let mut ws = WebSocket::from_raw_socket(
        Wire { input, at: 0 },
        Role::Server,
        Some(server_limits().websocket_config()),
    );
    let mut messages = 0;
    while ws.read().is_ok() {
        messages += 1;
    }
    messages
}

/// Most a server connection may hold while reading: a message at the hard
/// limit (4x the frame limit) twice (frame and message), the read buffer,
/// the bounded write buffer, and slack for the bookkeeping.
fn ws_bound() -> usize {
    let limits = server_limits();
    let config = limits.websocket_config();
    2 * 4 * FRAME_LIMIT + config.read_buffer_size + config.max_write_buffer_size + 16 * 1024
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn websocket_frames_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let (_, peak) = peak_allocation(|| read_all(bytes));
        prop_assert!(peak <= ws_bound(), "{peak} bytes");
    }

    #[test]
    fn websocket_frames_with_lying_headers(frames in prop::collection::vec(ws_frame(), 0..40)) {
        let (_, peak) = peak_allocation(|| read_all(frames.concat()));
        prop_assert!(peak <= ws_bound(), "{peak} bytes");
    }
}
