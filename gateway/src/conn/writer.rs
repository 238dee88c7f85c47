//! The WebSocket writer: drains a connection's outbound queue and writes
//! everything queued with one vectored write.
//!
//! Server frames are unmasked, so framing is a 2–10 byte header in front of
//! bytes that were encoded once and are shared by every subscriber.

use super::{ConnHandle, Disconnect, Out};
use crate::metrics::metrics;
use crate::protocol::{Frame, Transport};
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;
/// Frames per `writev`, well under IOV_MAX (1024) with two slices each.
const FRAMES_PER_WRITE: usize = 256;

/// How long the frames still queued and the close frame may take to write
/// once the connection is closing.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// Runs until the connection closes, then sends what is still queued (when
/// the reason allows: see [`Disconnect::flushes`]) and the close frame.
pub(crate) async fn run<W: AsyncWrite + Unpin>(w: &mut W, conn: &ConnHandle) {
    let mut batch: Vec<Out> = Vec::new();
    let mut heads: Vec<([u8; 10], usize)> = Vec::new();
    let mut clean = true;
    // Made once, not per batch (a waiter registered and removed each time).
    let closed = conn.closed();
    tokio::pin!(closed);
    while conn.next_batch(&mut batch).await {
        let res = {
            let write = write_batch(w, &batch, &mut heads);
            tokio::pin!(write);
            tokio::select! {
                biased;
                _ = &mut closed => {
                    // A client that broke the protocol still gets the answers
                    // to what it sent before, if its socket takes them in
                    // time; anyone else is cut off mid-write.
                    if !conn.reason().is_some_and(Disconnect::flushes) {
                        clean = false;
                        break;
                    }
                    // Boxed, as below: rare states stay out of the size every
                    // connection pays for.
                    match Box::pin(tokio::time::timeout(CLOSE_WRITE, &mut write)).await {
                        Ok(r) => r,
                        Err(_) => {
                            clean = false;
                            break;
                        }
                    }
                }
                r = &mut write => r,
            }
        };
        if let Err(e) = res {
            tracing::debug!(conn = conn.id(), error = %e, "write failed");
            conn.close(Disconnect::TransportError);
            clean = false;
            break;
        }
        metrics().sent(Transport::WebSocket, batch.iter().filter_map(Out::sent));
        batch.clear();
        // Small batches are the idle connection's: keep no buffer for them.
        if heads.capacity() <= 16 {
            heads = Vec::new();
        }
    }
    Box::pin(close(w, conn, batch, heads, clean)).await
}

/// Sends what is still queued (when the reason allows) and the close frame,
/// then shuts the socket down.
async fn close<W: AsyncWrite + Unpin>(
    w: &mut W,
    conn: &ConnHandle,
    mut batch: Vec<Out>,
    mut heads: Vec<([u8; 10], usize)>,
    clean: bool,
) {
    if clean {
        let reason = conn.reason();
        let finish = async {
            if reason.is_some_and(Disconnect::flushes) {
                batch.clear();
                conn.take_rest(&mut batch);
                write_batch(w, &batch, &mut heads).await?;
                metrics().sent(Transport::WebSocket, batch.iter().filter_map(Out::sent));
            }
            if let Some((code, why)) = reason.and_then(Disconnect::close_frame) {
                let mut frame = Vec::with_capacity(4 + why.len());
                let (head, n) = header(OP_CLOSE, 2 + why.len());
                frame.extend_from_slice(&head[..n]);
                frame.extend_from_slice(&code.to_be_bytes());
                frame.extend_from_slice(why.as_bytes());
                w.write_all(&frame).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_WRITE, finish).await;
    }
    let _ = tokio::time::timeout(CLOSE_WRITE, w.shutdown()).await;
}

/// Writes `batch` with one vectored write per [`FRAMES_PER_WRITE`] frames;
/// `heads` is the frame headers' buffer, kept across batches.
async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &[Out],
    heads: &mut Vec<([u8; 10], usize)>,
) -> std::io::Result<()> {
    for chunk in batch.chunks(FRAMES_PER_WRITE) {
        heads.clear();
        heads.extend(chunk.iter().map(|out| {
            let (op, len) = match out {
                Out::Data(Frame::Text(b), _) => (OP_TEXT, b.len()),
                Out::Data(Frame::Binary(b), _) => (OP_BINARY, b.len()),
                Out::Pong(b) => (OP_PONG, b.len()),
            };
            header(op, len)
        }));
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 2);
        for (out, (head, n)) in chunk.iter().zip(heads.iter()) {
            slices.push(IoSlice::new(&head[..*n]));
            let body = match out {
                Out::Data(f, _) => f.bytes(),
                Out::Pong(b) => b,
            };
            slices.push(IoSlice::new(body));
        }
        write_all_vectored(w, &mut slices).await?;
    }
    Ok(())
}

/// A final, unmasked frame header.
fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::header;

    #[test]
    fn header_lengths() {
        assert_eq!(header(1, 5).1, 2);
        assert_eq!(&header(1, 5).0[..2], &[0x81, 5]);
        assert_eq!(&header(2, 300).0[..4], &[0x82, 126, 1, 44]);
        assert_eq!(header(1, 70_000).1, 10);
    }
}
