//! Smoke run of `raw-writer` (the raw delivery ceiling `make bench` compares
//! the gateway with): a short `loadtest fanout --via api` against it.

use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A child process killed on Drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

fn start_raw_writer() -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_raw-writer"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run raw-writer");
        let mut p = Proc(child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if p.0.try_wait().unwrap().is_some() {
                break; // port taken: try another
            }
            if healthz(addr) {
                return (p, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("raw-writer did not start");
}

#[test]
fn loadtest_fanout_via_api_runs_against_raw_writer() {
    let (_raw, port) = start_raw_writer();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let json = std::env::temp_dir().join(format!("raw-writer-{}-{nanos}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["fanout", "-s", "50", "-t", "2", "-p", "50", "--via", "api"])
        .arg("--api-url")
        .arg(format!("http://127.0.0.1:{port}/api/broadcast"))
        .arg("--url")
        .arg(format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0"))
        .args(["--source-ips", "127.0.0.2,127.0.0.3"])
        .args(["--duration", "2s", "--drain", "1s"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest against raw-writer failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let v: Value = serde_json::from_str(&text).unwrap();
    let deliveries = v["counters"]["deliveries"].as_u64().unwrap();
    assert!(deliveries > 0, "no deliveries: {v}");
    assert_eq!(v["counters"]["joins_ok"], 50, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
}
