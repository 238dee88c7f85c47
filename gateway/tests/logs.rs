//! The structured logs of a real `gateway` process: with `format = "json"`
//! every line is a JSON object, a connection's lifecycle is one debug line
//! per event (opened, channel joined, join refused, channel left, closed)
//! carrying the connection id, and no payload is ever logged.
//!
//! Needs `redis-server` on PATH.

use gateway::config::LogFormat;
use serde_json::{json, Value};
use std::time::Duration;
use test_support::jwt::token;
use test_support::{broadcast, wait, GatewayProcess, RedisServer};

const SECRET_PAYLOAD: &str = "do-not-log-this-payload";

/// The pod's log lines parsed as JSON, once one has `message` = `until`.
/// The log's lines once every message of `until` is among them (the
/// connection's and its channel's ends are logged by different tasks, in
/// either order).
async fn lines_until(pod: &GatewayProcess, until: &[&str]) -> Vec<Value> {
    let what = format!("lines {until:?}");
    wait::until(&what, Duration::from_secs(10), || async {
        let log = pod.log();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let seen = |m: &&str| lines.iter().any(|l| l["fields"]["message"] == *m);
        match until.iter().all(seen) {
            true => Ok(lines),
            false => Err(log),
        }
    })
    .await
}

#[tokio::test]
async fn json_lines_one_per_lifecycle_event_and_no_payloads() {
    let redis = RedisServer::start().await;
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&redis.url())
        .configure(|c| {
            c.log.format = LogFormat::Json;
            c.log.level = "debug".into();
        })
        .start()
        .await;
    let mut c = pod.client_with_token(&token("carol")).await;
    c.join("room:lobby", "1").await;
    let refused = c.try_join("nowhere:1", "2").await;
    assert_eq!(refused[4]["status"], "error");
    c.send(json!(["1", "p", "room:lobby", "new_msg", {"text": SECRET_PAYLOAD}]))
        .await;
    let want = broadcast("room:lobby", "new_msg", json!({"text": SECRET_PAYLOAD}));
    loop {
        if c.recv().await == want {
            break;
        }
    }
    c.close().await;

    let lines = lines_until(&pod, &["connection closed", "channel left"]).await;
    for l in &lines {
        assert!(l["timestamp"].is_string(), "{l}");
        assert!(l["level"].is_string(), "{l}");
        assert!(l["target"].is_string(), "{l}");
    }
    let events: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["conn"].is_u64())
        .collect();
    let conn = events
        .iter()
        .find(|l| l["fields"]["message"] == "connection opened")
        .map(|l| l["fields"]["conn"].clone())
        .unwrap();
    let of_conn = |message: &str| {
        events
            .iter()
            .filter(|l| l["fields"]["conn"] == conn && l["fields"]["message"] == message)
            .map(|l| (*l).clone())
            .collect::<Vec<Value>>()
    };
    let opened = of_conn("connection opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["level"], "DEBUG");
    assert_eq!(opened[0]["fields"]["transport"], "WebSocket");
    assert_eq!(opened[0]["fields"]["socket_id"], "users_socket:carol");
    let joined = of_conn("channel joined");
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(joined[0]["fields"]["topic"], "room:lobby");
    let refused = of_conn("join refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["fields"]["result"], "unmatched_topic");
    let left = of_conn("channel left");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["fields"]["end"], "connection_closed");
    let closed = of_conn("connection closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["fields"]["reason"], "client_closed");

    let log = pod.log();
    assert!(
        !log.contains(SECRET_PAYLOAD),
        "a payload reached the log:\n{log}"
    );
}

/// Human-format logs written to a file (a pod's log, `kubectl logs`) carry
/// no colour codes, with or without `NO_COLOR`: colours are for terminals.
#[tokio::test]
async fn human_logs_in_a_file_have_no_colour_codes() {
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .shell_prefix("unset NO_COLOR")
        .start()
        .await;
    let log = wait::until("the listening line", Duration::from_secs(10), || async {
        let log = pod.log();
        match log.contains("gateway listening") {
            true => Ok(log),
            false => Err(log),
        }
    })
    .await;
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log:?}");
}

/// A start that fails (the port is taken) says so once, not in the log and
/// again on stderr, and exits with a failure.
#[test]
fn a_port_in_use_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (name, _) in gateway::config::ENV_VARS {
        cmd.env_remove(name);
    }
    cmd.env("PORT", port.to_string()).env("NO_COLOR", "1");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway exits when it cannot listen")
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    let said = format!("cannot listen on 127.0.0.1:{port}");
    assert_eq!(all.matches(&said).count(), 1, "{all}");
    drop(taken);
}

/// config/example.toml's demo JWT secret is public: a pod that verifies
/// tokens with it (development mode only) says so at start, naming the
/// variable that replaces it; a pod with its own secret does not.
#[tokio::test]
async fn the_demo_jwt_secret_is_warned_about_at_start() {
    let demo = |c: &mut gateway::config::Config| {
        c.log.format = LogFormat::Json;
        c.server.dev = true;
        if let Some(jwt) = &mut c.sockets[0].jwt {
            jwt.secret = Some(gateway::config::DEMO_JWT_SECRET.into());
        }
    };
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .configure(demo)
        .start()
        .await;
    let lines = lines_until(&pod, &["gateway listening"]).await;
    let warned = |lines: &[Value]| {
        lines.iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("GATEWAY_JWT_SECRET"))
        })
    };
    assert!(
        warned(&lines),
        "no warning about the demo secret: {lines:?}"
    );

    let own = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .configure(|c| c.log.format = LogFormat::Json)
        .start()
        .await;
    let lines = lines_until(&own, &["gateway listening"]).await;
    assert!(!warned(&lines), "{lines:?}");
}

/// Outside development mode the demo secret, like any HS* secret shorter
/// than 32 bytes, stops the start with a config error naming the key.
#[test]
fn a_short_jwt_secret_is_refused_outside_development() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/example.toml");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (name, _) in gateway::config::ENV_VARS {
        cmd.env_remove(name);
    }
    cmd.args(["--config", example])
        .env("GATEWAY_DEV", "0")
        .env("GATEWAY_LISTEN", "127.0.0.1:0");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway refuses to start")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("socket[0].jwt.secret"), "{stderr}");
    assert!(stderr.contains("GATEWAY_DEV=1"), "{stderr}");
}
