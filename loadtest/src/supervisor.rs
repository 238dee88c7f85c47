//! The parent's side of the workers: how many there are, starting them (in
//! this process when one is enough, else as child processes re-executing
//! this binary with the same arguments), sending them [`Control`]
//! messages, and funnelling their [`Out`] messages, tagged with the worker's
//! number, into one channel.
//!
//! It moves messages and owns the child processes (killed when [`Workers`]
//! is dropped); it must not interpret what the workers report, nor decide
//! when the run moves on. That is `collect`'s and `main`'s job.

use crate::cli::Cli;
use crate::worker::{self, Control, Out};
use anyhow::Context as _;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;

/// Past `--per-worker` connections one process runs out of file descriptors
/// (and of one core), so the connections are spread over more processes.
pub(crate) fn worker_count(cli: &Cli) -> u64 {
    let (n, ..) = cli.shape();
    n.div_ceil(cli.per_worker.max(1)).max(1)
}

/// The parent's handle on one worker, in-process or a child process.
struct Handle {
    ctrl: mpsc::UnboundedSender<Control>,
    /// Held so that dropping the handle kills the child (`kill_on_drop`),
    /// and read for its pid.
    _child: Option<tokio::process::Child>,
}

/// Every worker of the run; dropping it kills the child processes.
pub(crate) struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `count` workers; each message one sends arrives on `out` as
    /// `(worker number, message)`.
    pub(crate) fn spawn(
        cli: &Arc<Cli>,
        count: u64,
        out: mpsc::UnboundedSender<(usize, Out)>,
    ) -> anyhow::Result<Workers> {
        if count == 1 {
            return Ok(Workers {
                handles: vec![in_process(cli.clone(), out)],
            });
        }
        let exe = std::env::current_exe()?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let mut handles = Vec::new();
        for i in 0..count {
            let child = tokio::process::Command::new(&exe)
                .args(&args)
                .arg("--worker-index")
                .arg(i.to_string())
                .arg("--worker-count")
                .arg(count.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn worker")?;
            handles.push(child_process(i as usize, child, out.clone())?);
        }
        Ok(Workers { handles })
    }

    /// The processes that run the workers (this one, when it runs the only
    /// worker), whose CPU time is the client's.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let children: Vec<u32> = self
            .handles
            .iter()
            .filter_map(|h| h._child.as_ref().and_then(tokio::process::Child::id))
            .collect();
        let mut pids = vec![std::process::id()];
        pids.extend(children);
        pids
    }

    /// Sends `c` to every worker. A worker that is gone no longer listens;
    /// the collector notices it by its missing messages.
    pub(crate) fn send(&self, c: Control) {
        for h in &self.handles {
            let _ = h.ctrl.send(c);
        }
    }
}

/// The only worker, as a task of this process: no pipes, no second binary.
fn in_process(cli: Arc<Cli>, out: mpsc::UnboundedSender<(usize, Out)>) -> Handle {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (otx, mut orx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = worker::worker(cli, 0, 1, crx, otx).await {
            eprintln!("worker failed: {e:#}");
        }
    });
    tokio::spawn(async move {
        while let Some(o) = orx.recv().await {
            if out.send((0, o)).is_err() {
                break;
            }
        }
    });
    Handle {
        ctrl: ctx,
        _child: None,
    }
}

/// Wires worker `i`'s pipes: JSON lines from its stdout to `out`, control
/// lines to its stdin.
fn child_process(
    i: usize,
    mut child: tokio::process::Child,
    out: mpsc::UnboundedSender<(usize, Out)>,
) -> anyhow::Result<Handle> {
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<Out>(&l) {
                Ok(o) => {
                    if out.send((i, o)).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("worker {i}: bad line ({e}): {l:.200}"),
            }
        }
    });
    let (ctx, mut crx) = mpsc::unbounded_channel::<Control>();
    tokio::spawn(async move {
        while let Some(c) = crx.recv().await {
            if stdin.write_all(c.line().as_bytes()).await.is_err() {
                break;
            }
            let _ = stdin.flush().await;
        }
    });
    Ok(Handle {
        ctrl: ctx,
        _child: Some(child),
    })
}
