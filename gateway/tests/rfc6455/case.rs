//! The cases' vocabulary (what to send, what must come back), the runner,
//! and the heartbeats that stand in for echoed messages.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use test_support::memory;
use test_support::raw_ws::{Event, RawFrame as F, RawWs, CONTINUATION};
use test_support::{GatewayProcess, PhxClient};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_gateway");
/// Generous bounds, whatever the cases sent: the canary's answer time and
/// the pod's memory (1 MiB messages are its largest; larger frames are
/// refused from their header, before anything is buffered).
const CANARY_BOUND: Duration = Duration::from_secs(3);
const RSS_BOUND: usize = 128 << 20;
/// `[socket] max_frame_size` of the test pods (the default).
pub(crate) const MAX: usize = 1 << 20;

/// A close the server must send: its code and reason.
pub(crate) type Close = (u16, &'static str);
pub(crate) const PROTOCOL: Close = (1002, "protocol error");
pub(crate) const BAD_UTF8: Close = (1007, "invalid utf-8");
/// A well-formed WebSocket message that is not a Phoenix message.
pub(crate) const NOT_PHOENIX: Close = (1007, "malformed message");
pub(crate) const TOO_BIG: Close = (1009, "message too big");

/// "κόσμε", the UTF-8 sample of Autobahn 6 and 7.
pub(crate) const KOSME: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";

/// A frame the server must send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ev {
    /// The reply to a heartbeat whose ref was this.
    Reply(String),
    Pong(Vec<u8>),
}

impl Ev {
    pub(crate) fn matches(&self, got: &Event) -> bool {
        match (self, got) {
            (Ev::Reply(r), Event::Text(t)) => {
                let want =
                    json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]);
                serde_json::from_str::<Value>(t).is_ok_and(|v| v == want)
            }
            (Ev::Pong(p), Event::Pong(got)) => p == got,
            _ => false,
        }
    }
}

pub(crate) fn pong(p: impl Into<Vec<u8>>) -> Ev {
    Ev::Pong(p.into())
}

pub(crate) enum Step {
    /// The frames in one write.
    Send(Vec<F>),
    /// One write per frame (Autobahn's `sync`).
    FrameWise(Vec<F>),
    /// Writes of this many bytes (Autobahn's `chopsize`).
    Chopped(Vec<F>, usize),
    /// Raw bytes in one write (part of a frame).
    Bytes(Vec<u8>),
    /// The next frame must be this (where Autobahn waits).
    Recv(Ev),
}

/// How a case must end.
pub(crate) enum End {
    /// Exactly these frames; then the client closes with 1000, echoed.
    Clean(Vec<Ev>),
    /// The server fails the connection with this close, sending nothing before.
    Fails(Close),
    /// The same, after either these frames (OK) or none (Autobahn's
    /// NON-STRICT: they were queued when the bad frame was read).
    FailsAfter(Close, Vec<Ev>),
    /// The client closed: the server echoes this code, after a prefix of
    /// these frames (what it answered before it read the close).
    Echoes(u16, Vec<Ev>),
}

pub(crate) struct Case {
    id: String,
    steps: Vec<Step>,
    end: End,
}

pub(crate) fn case(id: impl Into<String>, steps: Vec<Step>, end: End) -> Case {
    Case {
        id: id.into(),
        steps,
        end,
    }
}

pub(crate) fn send(frames: Vec<F>) -> Vec<Step> {
    vec![Step::Send(frames)]
}

/// What comes before and after a heartbeat's ref.
pub(crate) const HB_HEAD: &[u8] = br#"[null,""#;
pub(crate) const HB_TAIL: &[u8] = br#"","phoenix","heartbeat",{}]"#;

/// A heartbeat with ref `r` (raw bytes, which may be invalid UTF-8).
pub(crate) fn hb(r: &[u8]) -> Vec<u8> {
    [HB_HEAD, r, HB_TAIL].concat()
}

/// A text heartbeat of exactly `len` bytes: its ref is `*` repeated.
pub(crate) fn hb_of(len: usize) -> (Vec<u8>, Ev) {
    let r = "*".repeat(len - hb(b"").len());
    (hb(r.as_bytes()), Ev::Reply(r))
}

/// The length of the smallest binary heartbeat: header, ref, topic, event.
pub(crate) const BIN_HB_MIN: usize = 22;

/// A V2 binary heartbeat (kind 0 push) of exactly `len` bytes (at least
/// [`BIN_HB_MIN`]), padded with 0xFE after ref `b`.
pub(crate) fn bin_hb_of(len: usize) -> (Vec<u8>, Ev) {
    let mut f = vec![0, 0, 1, 7, 9];
    f.extend_from_slice(b"bphoenixheartbeat");
    assert_eq!(f.len(), BIN_HB_MIN);
    assert!(
        len >= BIN_HB_MIN,
        "a binary heartbeat has {BIN_HB_MIN} bytes at least"
    );
    f.resize(len, 0xFE);
    (f, Ev::Reply("b".into()))
}

/// `msg` split at `at` into a fragmented message of `opcode`.
pub(crate) fn fragments(opcode: u8, msg: &[u8], at: &[usize]) -> Vec<F> {
    let mut cuts = vec![0];
    cuts.extend_from_slice(at);
    cuts.push(msg.len());
    let n = cuts.len() - 1;
    (0..n)
        .map(|i| {
            let op = if i == 0 { opcode } else { CONTINUATION };
            let f = F::new(op, &msg[cuts[i]..cuts[i + 1]]);
            if i + 1 < n {
                f.more()
            } else {
                f
            }
        })
        .collect()
}

/// `msg` in fragments of `size` bytes.
pub(crate) fn fragments_of(opcode: u8, msg: &[u8], size: usize) -> Vec<F> {
    let at: Vec<usize> = (size..msg.len()).step_by(size).collect();
    fragments(opcode, msg, &at)
}

/// A pod and a canary client that must stay unaffected.
pub(crate) struct Pod {
    pub(crate) gw: GatewayProcess,
    canary: PhxClient,
}

impl Pod {
    pub(crate) async fn start() -> Pod {
        let gw = GatewayProcess::builder(BIN).start().await;
        let mut canary = gw.client().await;
        canary.heartbeat("canary").await;
        Pod { gw, canary }
    }

    pub(crate) async fn ws(&self) -> RawWs {
        RawWs::connect(self.gw.addr, "/socket/websocket?vsn=2.0.0").await
    }

    /// Runs each case on a connection of its own, the canary's heartbeat
    /// answered after each; then bounds its slowest answer and the pod's RSS.
    pub(crate) async fn run(&mut self, cases: Vec<Case>) {
        let mut slowest = self.canary_answer().await;
        for c in cases {
            self.run_case(c).await;
            slowest = slowest.max(self.canary_answer().await);
        }
        assert!(self.gw.alive());
        let rss = memory::rss(self.gw.pid());
        eprintln!(
            "canary's slowest answer {slowest:?}, pod RSS {} MiB",
            rss >> 20
        );
        assert!(slowest < CANARY_BOUND, "canary answered in {slowest:?}");
        assert!(rss < RSS_BOUND, "pod RSS {} MiB", rss >> 20);
    }

    /// How long the canary's heartbeat took to be answered.
    async fn canary_answer(&mut self) -> Duration {
        let sent = Instant::now();
        self.canary.heartbeat("canary").await;
        sent.elapsed()
    }

    async fn run_case(&self, c: Case) {
        let id = c.id;
        let mut ws = self.ws().await;
        for step in c.steps {
            match step {
                Step::Send(f) => ws.send(&f).await,
                Step::FrameWise(f) => ws.send_frame_wise(&f).await,
                Step::Chopped(f, n) => ws.send_chopped(&f, n).await,
                Step::Bytes(b) => ws.send_bytes(&b).await,
                Step::Recv(ev) => {
                    let got = ws.next().await;
                    assert!(ev.matches(&got), "{id}: expected {ev:?}, got {got:?}");
                }
            }
        }
        let same = |want: &[Ev], got: &[Event]| {
            want.len() == got.len() && want.iter().zip(got).all(|(w, g)| w.matches(g))
        };
        match c.end {
            End::Clean(want) => {
                for ev in want {
                    let got = ws.next().await;
                    assert!(ev.matches(&got), "{id}: expected {ev:?}, got {got:?}");
                }
                ws.send(&[F::close(Some(1000), b"")]).await;
                let (got, code, _) = ws.until_close().await;
                assert!(got.is_empty(), "{id}: unexpected {got:?}");
                assert_eq!(code, Some(1000), "{id}");
            }
            End::Fails((code, reason)) => {
                let (got, c, r) = ws.until_close().await;
                assert!(got.is_empty(), "{id}: unexpected {got:?}");
                assert_eq!((c, r.as_str()), (Some(code), reason), "{id}");
            }
            End::FailsAfter((code, reason), want) => {
                let (got, c, r) = ws.until_close().await;
                assert!(got.is_empty() || same(&want, &got), "{id}: got {got:?}");
                assert_eq!((c, r.as_str()), (Some(code), reason), "{id}");
            }
            End::Echoes(code, want) => {
                let (got, c, _) = ws.until_close().await;
                assert!(
                    same(&want[..got.len().min(want.len())], &got),
                    "{id}: got {got:?}"
                );
                assert_eq!(c, Some(code), "{id}");
            }
        }
    }
}
