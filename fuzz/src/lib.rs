//! Helpers shared by the fuzz targets: polling a future without a runtime,
//! a reader that hands out bytes in pieces (and sometimes not at all), and
//! generators of the values clients send.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// Polls `f` once with a no-op waker: `Some` when it completed.
pub fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Hands out `data` in pieces whose sizes come from `sizes` (cycled), and
/// answers `Pending` before a piece when `stall` says so: what a socket does.
#[derive(Debug)]
pub struct Trickle<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    stall: u64,
    step: usize,
}

impl<'a> Trickle<'a> {
    /// `sizes` of 0 mean "everything left"; bit `i % 64` of `stall` makes
    /// the `i`th read pend once.
    pub fn new(data: &'a [u8], sizes: Vec<usize>, stall: u64) -> Self {
        Trickle {
            data,
            sizes,
            stall,
            step: 0,
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let step = self.step;
        self.step += 1;
        if step % 2 == 0 && self.stall & (1 << ((step / 2) % 64)) != 0 {
            return Poll::Pending;
        }
        let want = match self.sizes.get((step / 2) % self.sizes.len().max(1)) {
            Some(&n) if n > 0 => n,
            _ => usize::MAX,
        };
        let n = want.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// A short string, often one of the words clients send.
pub fn word(u: &mut Unstructured<'_>) -> Result<String> {
    const WORDS: &[&str] = &[
        "",
        "1",
        "phoenix",
        "heartbeat",
        "phx_join",
        "phx_leave",
        "room:lobby",
        "user:42",
        "new_msg",
        "a\"b\\c\n",
        "é:😀",
    ];
    if u.ratio(1, 2)? {
        Ok((*u.choose(WORDS)?).to_owned())
    } else {
        u.arbitrary()
    }
}

/// A JSON value of bounded depth, with the awkward numbers and strings.
pub fn json(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => match u.int_in_range(0..=2)? {
            0 => Value::from(u.arbitrary::<i64>()?),
            1 => Value::from(u.arbitrary::<u64>()?),
            _ => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        },
        3 | 4 => Value::String(word(u)?),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| json(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => Value::Object(object(u, depth - 1)?),
    })
}

/// A JSON object of bounded depth.
pub fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let n = u.int_in_range(0..=4)?;
    let mut m = Map::new();
    for _ in 0..n {
        m.insert(word(u)?, json(u, depth)?);
    }
    Ok(m)
}

/// Whether serde_json's strict reading of `data` fails where the gateway's
/// decoders rightly accept it: they skip what they do not keep (extra array
/// elements, unknown keys) without checking its UTF-8, and keep payloads as
/// text, where `\uDxxx` escapes need not pair up and numbers may exceed an
/// f64, as JavaScript's `JSON.parse` takes them (lone surrogates, Infinity),
/// and nest deeper than serde_json's 128 levels (skipped without recursion).
pub fn lenient_only(data: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(data) {
        Ok(_) => false,
        Err(_) if std::str::from_utf8(data).is_err() => true,
        Err(e) => {
            let e = e.to_string();
            [
                "invalid unicode code point",
                "surrogate",
                "hex escape",
                "number out of range",
                "recursion limit",
            ]
            .iter()
            .any(|m| e.contains(m))
        }
    }
}
