//! The process guard: a child process killed on drop, whose output goes to a
//! log file that is printed to stderr when the test is panicking (so a CI
//! failure shows why); signals (SIGTERM, SIGSTOP/SIGCONT) and exit status;
//! and starting a server on a free port, again on a new one when another
//! test took the port between the probe and the bind.

use crate::temp::free_port;
use crate::wait::{POLL, START_TIMEOUT};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The resident memory of process `pid` in bytes (`VmRSS` of
/// `/proc/{pid}/status`), 0 once it is gone.
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// How many free ports a starter tries before it gives up.
const ATTEMPTS: usize = 5;

/// Lines of the log printed when a test panics.
const LOG_TAIL: usize = 100;

/// A child process, killed on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    paused: bool,
}

impl Process {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to
    /// `log`; `name` heads its log when a test fails.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: impl Into<PathBuf>) -> Process {
        let (name, log) = (name.into(), log.into());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {:?} ({e}): is it installed?", cmd.get_program())
            });
        Process {
            name,
            child,
            log,
            paused: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.exited().is_none()
    }

    /// The exit status once the process has ended, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits (bounded by `within`) until the process has exited.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let what = format!("{} exits", self.name);
        crate::wait::until(&what, within, || {
            let status = self.exited();
            async move { status.ok_or("running") }
        })
        .await
    }

    /// SIGTERM: a clean stop, as Kubernetes asks for one.
    pub fn terminate(&self) {
        signal(self.pid(), "-TERM");
    }

    /// SIGSTOP: the process neither answers nor closes its connections.
    pub fn pause(&mut self) {
        signal(self.pid(), "-STOP");
        self.paused = true;
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&mut self) {
        signal(self.pid(), "-CONT");
        self.paused = false;
    }

    /// SIGKILL, and waits for the end: every connection drops at once.
    pub fn kill(&mut self) {
        if self.paused {
            self.resume();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} ({}) -----", self.name, self.log.display());
            for l in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                eprintln!("{l}");
            }
        }
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// What a readiness probe saw on the new process's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Our process answers.
    Ready,
    /// Another process answers: the port was taken.
    Taken,
    /// Nothing answers yet.
    Pending,
}

/// Spawns `cmd`, meant to serve on `port`, and waits until `probe(port,
/// pid)` says it is ready. `None` when it exited or another process answers
/// there (then it is killed). Panics when it neither answers nor exits
/// within [`START_TIMEOUT`].
pub async fn start_on<F, Fut>(
    name: &str,
    cmd: Command,
    log: &Path,
    port: u16,
    mut probe: F,
) -> Option<Process>
where
    F: FnMut(u16, u32) -> Fut,
    Fut: Future<Output = Probe>,
{
    let mut p = Process::spawn(name, cmd, log);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if p.exited().is_some() {
            return None;
        }
        match probe(port, p.pid()).await {
            Probe::Ready => return Some(p),
            Probe::Taken => return None,
            Probe::Pending => {}
        }
        if Instant::now() >= deadline {
            p.kill();
            panic!(
                "{name} on port {port} did not answer within {START_TIMEOUT:?}:\n{}",
                p.log()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`start_on`] a free port (`command(port)` builds the command), again on
/// a new port when the last one was taken: the process and its port.
pub async fn start_on_free_port<C, F, Fut>(
    name: &str,
    log: &Path,
    mut command: C,
    mut probe: F,
) -> (Process, u16)
where
    C: FnMut(u16) -> Command,
    F: FnMut(u16, u32) -> Fut,
    Fut: Future<Output = Probe>,
{
    for _ in 0..ATTEMPTS {
        let port = free_port();
        if let Some(p) = start_on(name, command(port), log, port, &mut probe).await {
            return (p, port);
        }
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{name} did not start on any of {ATTEMPTS} free ports; its log:\n{log}");
}
