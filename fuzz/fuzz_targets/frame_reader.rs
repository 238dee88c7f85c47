//! The WebSocket frame reader (`transport/frame_reader.rs`) on arbitrary
//! client bytes.
//!
//! Input: 2 bytes of size limit, 1 byte choosing how the bytes arrive
//! (piece sizes), 1 byte of stalls, then the bytes on the wire.
//!
//! Checks:
//! - it agrees with a reference reader written from RFC 6455 (below): the
//!   same messages in the same order, then the same kind of stop (1002
//!   framing errors, 1007 invalid UTF-8 as soon as a fragment shows it, too
//!   large, end of input);
//! - the result does not depend on how the bytes arrive, nor on `next()`
//!   being cancelled while the socket has nothing (cancel safety);
//! - no message is over the limit, and the reader never holds more than
//!   about two messages' worth of bytes (limit + header, doubled by
//!   allocation growth, plus a read chunk).
#![no_main]

use gateway::fuzzing::{Frame, FrameReader, Stop};
use gateway_fuzz::{poll_once, Trickle};
use libfuzzer_sys::fuzz_target;

/// The largest header: 2 bytes, 8 of length, 4 of mask.
const HEADER: usize = 14;
/// What one read may add beyond a frame (the reader's read chunk).
const READ_CHUNK: usize = 1024;

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([input[0], input[1]]));
    let sizes: Vec<usize> = match input[2] {
        0 => vec![0],
        n => vec![usize::from(n % 16), usize::from(n / 16), 1, 3],
    };
    let stall = u64::from(input[3]) * 0x0101_0101_0101_0101;
    let wire = &input[4..];

    let want = reference(wire, max);
    let whole = read_all(Trickle::new(wire, vec![0], 0), max);
    assert_eq!(whole, want, "reader disagrees with the reference");
    let trickled = read_all(Trickle::new(wire, sizes, stall), max);
    assert_eq!(trickled, want, "result depends on how the bytes arrive");
});

/// Everything the reader yields up to its first stop or close, checking the
/// bounds after every poll.
fn read_all(io: Trickle<'_>, max: usize) -> (Vec<Frame>, Option<Stop>) {
    let mut reader = FrameReader::new(io, max);
    let mut out = Vec::new();
    // Every poll consumes input or pends once, so this ends.
    loop {
        let polled = poll_once(reader.next());
        let (len, cap, partial) = reader.held();
        assert!(len <= cap);
        assert!(
            partial <= max,
            "fragments over the limit are kept: {partial} > {max}"
        );
        let bound = 2 * (max + HEADER) + 2 * READ_CHUNK;
        assert!(
            cap <= bound,
            "read buffer of {cap} bytes for a limit of {max}"
        );
        match polled {
            None => continue, // cancelled while pending; call again
            Some(Ok(frame)) => {
                if let Frame::Text(b) | Frame::Binary(b) = &frame {
                    assert!(
                        b.len() <= max,
                        "a message of {} bytes, limit {max}",
                        b.len()
                    );
                }
                let close = matches!(frame, Frame::Close(_));
                out.push(frame);
                if close {
                    return (out, None);
                }
            }
            Some(Err(stop)) => return (out, Some(stop)),
        }
    }
}

/// RFC 6455 as a server reads client frames, written plainly over the whole
/// input: frames must be masked, with no reserved bits or opcodes, control
/// frames unfragmented and at most 125 bytes, lengths under 2^63,
/// continuations only inside a message, close codes as §7.4 and IANA allow;
/// all of that is a protocol error (1002). Text must be UTF-8, checked as
/// each fragment arrives, and so must a close reason (1007). Messages are at
/// most `max` bytes.
fn reference(mut wire: &[u8], max: usize) -> (Vec<Frame>, Option<Stop>) {
    let mut out = Vec::new();
    let mut partial: Option<(u8, Vec<u8>)> = None;
    let stop = |out, s| (out, Some(s));
    loop {
        if wire.len() < 2 {
            return stop(out, Stop::Eof);
        }
        let (fin, rsv, opcode, masked) = (
            wire[0] & 0x80 != 0,
            wire[0] & 0x70,
            wire[0] & 0x0F,
            wire[1] & 0x80 != 0,
        );
        if rsv != 0 || !masked || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return stop(out, Stop::Protocol);
        }
        let control = opcode >= 8;
        if control && !fin {
            return stop(out, Stop::Protocol);
        }
        let (len, at) = match wire[1] & 0x7F {
            126 if wire.len() >= 4 => (u64::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            127 if wire.len() >= 10 => (u64::from_be_bytes(wire[2..10].try_into().unwrap()), 10),
            126 | 127 => return stop(out, Stop::Eof),
            n => (u64::from(n), 2),
        };
        if control && len > 125 || len >= 1 << 63 {
            return stop(out, Stop::Protocol);
        }
        let so_far = partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if !control && len.saturating_add(so_far) > max as u64 {
            return stop(out, Stop::TooLarge);
        }
        let len = len as usize;
        if wire.len() < at + 4 + len {
            return stop(out, Stop::Eof);
        }
        let mask = &wire[at..at + 4];
        let payload: Vec<u8> = wire[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        wire = &wire[at + 4 + len..];
        match opcode {
            9 => out.push(Frame::Ping(payload.into())),
            10 => {}
            8 => {
                let code = match payload.len() {
                    0 => None,
                    1 => return stop(out, Stop::Protocol),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                            return stop(out, Stop::Protocol);
                        }
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return stop(out, Stop::InvalidUtf8);
                        }
                        Some(code)
                    }
                };
                out.push(Frame::Close(code));
                return (out, None);
            }
            op => {
                let (op, data) = match (op, partial.take()) {
                    (0, None) => return stop(out, Stop::Protocol),
                    (0, Some((op, mut data))) => {
                        data.extend_from_slice(&payload);
                        (op, data)
                    }
                    (_, Some(_)) => return stop(out, Stop::Protocol),
                    (op, None) => (op, payload),
                };
                if op == 1 && !utf8_so_far(&data, fin) {
                    return stop(out, Stop::InvalidUtf8);
                }
                if !fin {
                    partial = Some((op, data));
                } else if op == 1 {
                    out.push(Frame::Text(data.into()));
                } else {
                    out.push(Frame::Binary(data.into()));
                }
            }
        }
    }
}

/// Whether text received so far can still be UTF-8: it is, or it ends in
/// the first bytes of a code point and more fragments follow.
fn utf8_so_far(data: &[u8], fin: bool) -> bool {
    match std::str::from_utf8(data) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && !fin,
    }
}
