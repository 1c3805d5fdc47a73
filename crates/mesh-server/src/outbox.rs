//! The write path: each connection's outbox of ready-to-send WebSocket
//! frames, and the writer task that drains it into the socket.
//!
//! Frames are encoded once, with their WebSocket header, into shared
//! [`Bytes`]: a presence update goes to every subscriber as the same
//! buffer, and a room snapshot to every asker as the same body. The writer
//! hands those buffers to the kernel with vectored writes and keeps no
//! buffer of its own, so what a connection holds is its queue and nothing
//! more: a large reply is released as soon as it has been written. A run
//! of updates from one room is queued as one range of that room's
//! [`Feed`], so a long backlog costs the connection a few words.
//!
//! Two budgets, because a backlog and a big answer are different things:
//!
//! * **Pushes** (presence updates, pings, the WebSocket layer's own pongs)
//!   are never awaited by their producer, so they are bounded: past
//!   `limit` queued bytes the connection is flagged as a slow consumer and
//!   its task closes it.
//! * **Replies** answer the connection's own requests. One is queued
//!   whatever its size; while more than `limit` reply bytes wait, the
//!   connection's task reads no further requests, so a client that asks
//!   without reading slows only itself.

use crate::feed::{Feed, Range};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Most buffers handed to one vectored write (Linux allows 1,024).
const MAX_SLICES: usize = 256;

/// What an outgoing frame is, for the budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Pushed by the server; bounded.
    Push,
    /// A latency probe or the WebSocket layer's own pong: bounded like
    /// pushes.
    Heartbeat,
    /// A ping: a heartbeat whose place in the stream is recorded once it
    /// is written (see [`Outbox::last_ping`]).
    Ping,
    /// The answer to one of the connection's requests.
    Reply,
    /// The close frame: the last thing written.
    Close,
}

/// One WebSocket frame, header included, as one or more shared buffers.
pub(crate) struct Outgoing {
    parts: Parts,
    kind: Kind,
}

enum Parts {
    One(Bytes),
    Many(Box<[Bytes]>),
    /// Several whole frames: a run of a room's updates.
    Feed(Range),
}

impl Outgoing {
    /// A text frame from its JSON.
    pub(crate) fn text(kind: Kind, json: &str) -> Self {
        Outgoing {
            parts: Parts::One(framed(OpCode::Data(Data::Text), &[json.as_bytes()])),
            kind,
        }
    }

    /// A text frame whose payload is `parts` in order. The parts are not
    /// copied, so a large body can be shared by many connections.
    pub(crate) fn text_parts(kind: Kind, parts: &[Bytes]) -> Self {
        let len: usize = parts.iter().map(Bytes::len).sum();
        let mut head = BytesMut::with_capacity(10);
        header(OpCode::Data(Data::Text), len, &mut head);
        let all: Box<[Bytes]> = std::iter::once(head.freeze())
            .chain(parts.iter().filter(|p| !p.is_empty()).cloned())
            .collect();
        Outgoing {
            parts: Parts::Many(all),
            kind,
        }
    }

    /// Bytes the WebSocket layer framed itself (its automatic pongs).
    pub(crate) fn raw(bytes: &[u8]) -> Self {
        Outgoing {
            parts: Parts::One(Bytes::copy_from_slice(bytes)),
            kind: Kind::Heartbeat,
        }
    }

    /// A close frame; `None` closes without a status code.
    pub(crate) fn close(frame: Option<&CloseFrame>) -> Self {
        let payload = match frame {
            Some(f) => {
                let mut p = u16::from(f.code).to_be_bytes().to_vec();
                p.extend_from_slice(f.reason.as_bytes());
                p
            }
            None => Vec::new(),
        };
        Outgoing {
            parts: Parts::One(framed(OpCode::Control(CLOSE), &[&payload])),
            kind: Kind::Close,
        }
    }

    /// Bytes on the wire (of a frame that is not a feed range).
    pub(crate) fn len(&self) -> usize {
        match &self.parts {
            Parts::One(b) => b.len(),
            Parts::Many(parts) => parts.iter().map(Bytes::len).sum(),
            Parts::Feed(_) => 0,
        }
    }
}

const CLOSE: tokio_tungstenite::tungstenite::protocol::frame::coding::Control =
    tokio_tungstenite::tungstenite::protocol::frame::coding::Control::Close;

/// A server-to-client text frame (header and JSON) in one buffer, to be
/// shared by every connection it goes to.
pub(crate) fn framed_text(json: &str) -> Bytes {
    framed(OpCode::Data(Data::Text), &[json.as_bytes()])
}

fn framed(opcode: OpCode, payload: &[&[u8]]) -> Bytes {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(len + 10);
    header(opcode, len, &mut buf);
    for p in payload {
        buf.extend_from_slice(p);
    }
    buf.freeze()
}

/// A final, unmasked frame header (servers never mask).
fn header(opcode: OpCode, len: usize, out: &mut BytesMut) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut buf = Vec::with_capacity(10);
    // Formatting into a Vec cannot fail.
    let _ = header.format(len as u64, &mut buf);
    out.extend_from_slice(&buf);
}

/// A connection's outgoing queue; cheap to clone (every subscription of
/// the connection holds one).
#[derive(Clone)]
pub(crate) struct Outbox(Arc<Shared>);

struct Shared {
    queue: Mutex<Queue>,
    limit: usize,
    /// Wakes the writer when the queue stops being empty.
    wake_writer: Notify,
    /// Told by the writer after each write: room for more replies.
    drained: Notify,
    /// Told once when pushes overflow.
    overflow: Notify,
}

struct Queue {
    items: VecDeque<Outgoing>,
    /// Bytes of pushes queued or being written.
    push_bytes: usize,
    /// Bytes of replies queued or being written.
    reply_bytes: usize,
    /// Bytes of whole frames written into the socket so far.
    written: u64,
    /// Pings written so far.
    pings_written: u64,
    /// The last ping written.
    last_ping: Option<PingMark>,
    /// Since when the writer has been waiting for room in a full socket:
    /// the client is taking none of what we send it.
    blocked_since: Option<Instant>,
    /// When the writer last got bytes of anything but heartbeats into the
    /// socket: the client was reading, or its buffers had room.
    progress: Instant,
    overflowed: bool,
    /// A close frame is queued: nothing more is accepted.
    closing: bool,
}

/// Where in the stream a ping ended, and when it was written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PingMark {
    /// Which ping: 1 for the first written.
    pub(crate) seq: u64,
    /// Bytes written up to and including the ping: its pong shows the
    /// client has read this far.
    pub(crate) end: u64,
    pub(crate) at: Instant,
}

/// What the writer knows of the client's reading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// When the writer last got anything but heartbeats into the socket.
    /// A client that stopped reading stops this clock within the size of
    /// the socket buffers (after that, writes stall); a client that reads
    /// a long backlog keeps it going.
    pub(crate) progress: Instant,
    /// Bytes of whole frames written into the socket so far.
    pub(crate) written: u64,
    /// The last ping written.
    pub(crate) last_ping: Option<PingMark>,
    /// Since when a full socket has kept the writer waiting.
    pub(crate) blocked_since: Option<Instant>,
}

impl Outbox {
    /// An empty outbox whose pushes may queue up to `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Outbox(Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                push_bytes: 0,
                reply_bytes: 0,
                written: 0,
                pings_written: 0,
                last_ping: None,
                blocked_since: None,
                progress: Instant::now(),
                overflowed: false,
                closing: false,
            }),
            limit,
            wake_writer: Notify::new(),
            drained: Notify::new(),
            overflow: Notify::new(),
        }))
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.0.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame; `false` if it was refused: the connection is
    /// closing, or this push overflowed its budget (the connection is then
    /// flagged as a slow consumer).
    pub(crate) fn push(&self, frame: Outgoing) -> bool {
        let mut q = self.queue();
        if !self.admit(&mut q, frame.kind, frame.len()) {
            return false;
        }
        self.enqueue(q, frame);
        true
    }

    /// Counts `len` bytes of a `kind` frame against the budgets; `false`
    /// if it is refused: the connection is closing, or this push overflowed
    /// its budget (the connection is then flagged as a slow consumer).
    fn admit(&self, q: &mut Queue, kind: Kind, len: usize) -> bool {
        if q.closing || q.overflowed {
            return false;
        }
        match kind {
            Kind::Push | Kind::Heartbeat | Kind::Ping => {
                if q.push_bytes + len > self.0.limit {
                    q.overflowed = true;
                    self.0.overflow.notify_one();
                    return false;
                }
                q.push_bytes += len;
            }
            Kind::Reply => q.reply_bytes += len,
            Kind::Close => q.closing = true,
        }
        true
    }

    /// Appends an admitted frame, waking the writer if it was idle.
    fn enqueue(&self, mut q: MutexGuard<'_, Queue>, frame: Outgoing) {
        let was_empty = q.items.is_empty();
        q.items.push_back(frame);
        drop(q);
        if was_empty {
            self.0.wake_writer.notify_one();
        }
    }

    /// Queues frame `seq` of `feed` (its bytes: `frame`) as a push: it joins the
    /// last queued range when it follows it, so a run of one room's updates
    /// is one entry however long it gets. `false` as for [`Outbox::push`].
    pub(crate) fn push_feed(&self, feed: &Arc<Feed>, seq: u64, frame: &Bytes) -> bool {
        let mut q = self.queue();
        if !self.admit(&mut q, Kind::Push, frame.len()) {
            return false;
        }
        if let Some(Outgoing {
            parts: Parts::Feed(range),
            ..
        }) = q.items.back_mut()
        {
            if range.extend(feed, seq) {
                return true;
            }
        }
        let item = Outgoing {
            parts: Parts::Feed(Range::one(feed, seq, frame.clone())),
            kind: Kind::Push,
        };
        self.enqueue(q, item);
        true
    }

    /// Resolves once pushes have overflowed.
    pub(crate) async fn overflowed(&self) {
        loop {
            if self.queue().overflowed {
                return;
            }
            self.0.overflow.notified().await;
        }
    }

    /// Whether more than the budget of reply bytes waits to be written.
    pub(crate) fn replies_backlogged(&self) -> bool {
        self.queue().reply_bytes > self.0.limit
    }

    /// Resolves after the writer next makes progress.
    pub(crate) async fn drained(&self) {
        self.0.drained.notified().await;
    }

    /// What the writer knows of the client's reading. A writer that is
    /// behind without being blocked is behind on its own account (this
    /// server is busy), which says nothing about the client.
    pub(crate) fn reading(&self) -> Reading {
        let q = self.queue();
        Reading {
            progress: q.progress,
            written: q.written,
            last_ping: q.last_ping,
            blocked_since: q.blocked_since,
        }
    }

    /// The writer found the socket full.
    fn blocked(&self) {
        self.queue().blocked_since.get_or_insert_with(Instant::now);
    }

    /// Everything queued, once there is something; the queue left behind
    /// is empty and owns no memory.
    async fn take(&self) -> VecDeque<Outgoing> {
        loop {
            {
                let mut q = self.queue();
                if !q.items.is_empty() {
                    return std::mem::take(&mut q.items);
                }
            }
            self.0.wake_writer.notified().await;
        }
    }

    /// The writer got `w` into the socket.
    fn wrote(&self, w: Written) {
        let mut q = self.queue();
        q.push_bytes -= w.pushes;
        q.reply_bytes -= w.replies;
        q.written += (w.pushes + w.replies) as u64;
        q.blocked_since = None;
        let now = Instant::now();
        if w.real {
            q.progress = now;
        }
        if w.pinged {
            q.pings_written += 1;
            q.last_ping = Some(PingMark {
                seq: q.pings_written,
                end: q.written - w.after_ping as u64,
                at: now,
            });
        }
        drop(q);
        self.0.drained.notify_one();
    }
}

/// The reading half of a socket, as the WebSocket layer sees it: reads
/// come from the socket, and what the layer writes by itself (the pong to
/// a ping) is queued to the outbox as a push, so that a client that pings
/// without reading runs into the same budget as any slow consumer.
pub(crate) struct ReadSide {
    read: OwnedReadHalf,
    outbox: Outbox,
}

impl ReadSide {
    /// Reads from `read`; the layer's own frames go to `outbox`.
    pub(crate) fn new(read: OwnedReadHalf, outbox: Outbox) -> Self {
        ReadSide { read, outbox }
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Refused only when the connection is closing or already over
        // budget; its task is then ending it anyway.
        self.outbox.push(Outgoing::raw(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Drains `outbox` into the socket until a close frame has been written or
/// the socket fails. Holds no buffer between writes.
pub(crate) async fn write_loop(mut socket: OwnedWriteHalf, outbox: Outbox) {
    loop {
        let batch = outbox.take().await;
        let closing = batch.iter().any(|f| f.kind == Kind::Close);
        if write_all(&mut socket, &batch, &outbox).await.is_err() {
            return;
        }
        drop(batch);
        if closing {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

/// One buffer waiting to be written.
struct Slice {
    bytes: Bytes,
    kind: Kind,
    /// On the last buffer of a frame: the frame's bytes, for the budgets.
    frame_end: Option<usize>,
}

/// Walks a batch frame by frame, expanding feed ranges a chunk at a time,
/// and stops after a close frame.
struct Frames<'a> {
    batch: &'a VecDeque<Outgoing>,
    item: usize,
    /// Within a feed range: the next sequence number.
    seq: Option<u64>,
    done: bool,
}

impl<'a> Frames<'a> {
    fn new(batch: &'a VecDeque<Outgoing>) -> Self {
        Frames {
            batch,
            item: 0,
            seq: None,
            done: false,
        }
    }

    /// Adds buffers of whole frames to `out` until it holds about `max`.
    fn fill(&mut self, out: &mut VecDeque<Slice>, max: usize) {
        while !self.done && out.len() < max {
            let Some(item) = self.batch.get(self.item) else {
                self.done = true;
                return;
            };
            let kind = item.kind;
            match &item.parts {
                Parts::Feed(range) => {
                    let (feed, from, to) = range.rest();
                    let mut next = match self.seq {
                        Some(next) => next,
                        None => {
                            // The first frame, held by the range.
                            let first = range.first();
                            out.push_back(Slice {
                                bytes: first.clone(),
                                kind,
                                frame_end: Some(first.len()),
                            });
                            from
                        }
                    };
                    let got = if next < to && out.len() < max {
                        feed.get(next, to, max - out.len())
                    } else {
                        Vec::new()
                    };
                    for bytes in got {
                        let len = bytes.len();
                        out.push_back(Slice {
                            bytes,
                            kind,
                            frame_end: Some(len),
                        });
                        next += 1;
                    }
                    // A range's frames stay in its feed: unless `out` is
                    // full, everything left of the range is in it now.
                    if next >= to || out.len() < max {
                        self.item += 1;
                        self.seq = None;
                    } else {
                        self.seq = Some(next);
                    }
                }
                Parts::One(bytes) => {
                    out.push_back(Slice {
                        bytes: bytes.clone(),
                        kind,
                        frame_end: Some(bytes.len()),
                    });
                    self.item += 1;
                }
                Parts::Many(parts) => {
                    let len = item.len();
                    let last = parts.len().saturating_sub(1);
                    for (i, bytes) in parts.iter().enumerate() {
                        out.push_back(Slice {
                            bytes: bytes.clone(),
                            kind,
                            frame_end: (i == last).then_some(len),
                        });
                    }
                    self.item += 1;
                }
            }
            if kind == Kind::Close {
                self.done = true;
            }
        }
    }
}

/// What one write got into the socket.
#[derive(Default)]
struct Written {
    /// Bytes of whole push and heartbeat frames.
    pushes: usize,
    /// Bytes of whole replies.
    replies: usize,
    /// Bytes of a frame other than a heartbeat, whole or not.
    real: bool,
    /// A ping was completed, followed by `after_ping` bytes of whole frames.
    pinged: bool,
    after_ping: usize,
}

/// Writes every frame of `batch` (up to and including a close frame),
/// reporting progress to `outbox` after each write.
async fn write_all(
    socket: &mut OwnedWriteHalf,
    batch: &VecDeque<Outgoing>,
    outbox: &Outbox,
) -> io::Result<()> {
    let mut frames = Frames::new(batch);
    let mut pending: VecDeque<Slice> = VecDeque::new();
    // Bytes of `pending[0]` already written.
    let mut offset = 0;
    loop {
        frames.fill(&mut pending, MAX_SLICES);
        if pending.is_empty() {
            return Ok(());
        }
        let written = {
            let slices: Vec<IoSlice<'_>> = pending
                .iter()
                .take(MAX_SLICES)
                .enumerate()
                .map(|(i, s)| IoSlice::new(if i == 0 { &s.bytes[offset..] } else { &s.bytes }))
                .collect();
            // Tried first, so that a full socket is told apart from a
            // writer that is merely late.
            loop {
                match socket.try_write_vectored(&slices) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        outbox.blocked();
                        socket.writable().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        // A write that never waits spends no budget by itself; this keeps
        // a long batch from holding its thread.
        tokio::task::consume_budget().await;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        let mut w = Written::default();
        while left > 0 {
            let Some(front) = pending.front() else { break };
            w.real |= !matches!(front.kind, Kind::Heartbeat | Kind::Ping);
            let rest = front.bytes.len() - offset;
            if left < rest {
                offset += left;
                break;
            }
            left -= rest;
            offset = 0;
            let done = pending.pop_front().expect("front exists");
            if let Some(len) = done.frame_end {
                match done.kind {
                    Kind::Push | Kind::Heartbeat => {
                        w.pushes += len;
                        w.after_ping += len;
                    }
                    Kind::Ping => {
                        w.pushes += len;
                        w.pinged = true;
                        w.after_ping = 0;
                    }
                    Kind::Reply => {
                        w.replies += len;
                        w.after_ping += len;
                    }
                    Kind::Close => return Ok(()),
                }
            }
        }
        outbox.wrote(w);
    }
}

#[cfg(test)]
impl Outbox {
    /// Everything queued, once there is something.
    pub(crate) async fn take_all(&self) -> VecDeque<Outgoing> {
        self.take().await
    }

    /// The first queued frame.
    pub(crate) async fn take_one(&self) -> Outgoing {
        self.take().await.pop_front().expect("take returns a frame")
    }
}

#[cfg(test)]
impl Outgoing {
    /// The buffers of every frame this entry holds.
    pub(crate) fn buffers(&self) -> Vec<Bytes> {
        let batch = VecDeque::from([Outgoing {
            parts: match &self.parts {
                Parts::One(b) => Parts::One(b.clone()),
                Parts::Many(p) => Parts::Many(p.clone()),
                Parts::Feed(r) => {
                    let (feed, from, to) = r.rest();
                    let mut all = vec![r.first().clone()];
                    all.extend(feed.get(from, to, usize::MAX));
                    Parts::Many(all.into())
                }
            },
            kind: Kind::Push,
        }]);
        let mut out = VecDeque::new();
        Frames::new(&batch).fill(&mut out, usize::MAX);
        out.into_iter().map(|s| s.bytes).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_header() {
        let small = Outgoing::text(Kind::Push, "{}");
        assert_eq!(small.buffers()[0].as_ref(), b"\x81\x02{}");
        let body = Bytes::from(vec![b'x'; 300]);
        let big = Outgoing::text_parts(Kind::Reply, &[Bytes::from_static(b"["), body.clone()]);
        assert_eq!(big.buffers()[0].as_ref(), &[0x81, 126, 0x01, 0x2d]);
        assert_eq!(big.len(), 4 + 301);
        // The body is shared, not copied.
        assert_eq!(big.buffers()[2].as_ptr(), body.as_ptr());
    }

    #[tokio::test]
    async fn pushes_overflow_replies_do_not() {
        let outbox = Outbox::new(100);
        assert!(outbox.push(Outgoing::text(Kind::Reply, &"r".repeat(500))));
        assert!(outbox.replies_backlogged());
        assert!(outbox.push(Outgoing::text(Kind::Push, &"p".repeat(50))));
        assert!(!outbox.push(Outgoing::text(Kind::Push, &"p".repeat(60))));
        // Flagged: later pushes are refused even if they would fit.
        assert!(!outbox.push(Outgoing::text(Kind::Push, "1")));
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.overflowed())
            .await
            .unwrap();
        assert_eq!(outbox.take().await.len(), 2);
    }
}
