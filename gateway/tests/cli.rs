//! The operator's commands of the `gateway` binary against real pods and a
//! real `redis-server`: `token` (a client connects with what it mints),
//! `publish` through Redis and through a pod's API, `pods`, `topics`,
//! `topic`, `disconnect` (and `--topic`), `check`, and their exit codes: 0,
//! 1 refused, 3 some pods silent, 64 usage, 69 unreachable.
//!
//! Needs `redis-server` on PATH.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use test_support::jwt::{now, SECRET};
use test_support::wait::{until, SETTLE};
use test_support::{broadcast, Cluster, GatewayBuilder, GatewayProcess};

const KEY: &str = "admin-key-for-cli-tests";

fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).configure(|c| {
        c.admin.key = Some(KEY.into());
        c.admin.timeout_ms = 2000;
    })
}

/// Runs `gateway args...` with the config of `pod` (its port, Redis, keys)
/// and no gateway variables from the test's environment.
async fn gateway(config: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (name, _) in gateway::config::ENV_VARS {
        cmd.env_remove(name);
    }
    cmd.env_remove("GATEWAY_URL");
    cmd.args(args).arg("--config").arg(config);
    cmd.stdin(std::process::Stdio::null());
    cmd.output().await.expect("run gateway")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_real_pods() {
    let mut cluster = Cluster::start(pod(), 2).await;
    let cfg0 = cluster.pods[0].config_path().to_owned();
    let cfg1 = cluster.pods[1].config_path().to_owned();

    // check
    let o = gateway(&cfg0, &["check"]).await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).starts_with("config ok"), "{}", show(&o));

    // token: a client connects with it, named by its sub and extra claim.
    let o = gateway(
        &cfg0,
        &["token", "--sub", "42", "--ttl", "1h", "--claim", "role=ops"],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    let token = stdout(&o).trim().to_owned();
    let claims: Value = {
        let mut v = jsonwebtoken::Validation::default();
        v.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
            &v,
        )
        .expect("signed with the config's secret")
        .claims
    };
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["role"], "ops");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp > now() + 3500 && exp <= now() + 3600, "{claims}");
    let mut user = cluster.pods[1].client_with_token(&token).await;
    user.join("room:cli", "1").await;
    let mut other = cluster.pods[0].client().await;
    other.join("room:cli", "1").await;

    // publish through Redis (the config's [redis]) and through pod 1's API.
    let o = gateway(
        &cfg0,
        &["publish", "room:cli", "new_msg", r#"{"body":"via redis"}"#],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    let via_redis = broadcast("room:cli", "new_msg", json!({"body": "via redis"}));
    user.expect(via_redis.clone()).await;
    other.expect(via_redis).await;
    let url = format!("http://{}", cluster.pods[1].addr);
    let key = cluster.pods[1].api_key.clone();
    let o = gateway(
        &cfg0,
        &[
            "publish",
            "room:cli",
            "new_msg",
            r#"{"body":"via api"}"#,
            "--url",
            &url,
            "--key",
            &key,
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    user.expect(broadcast("room:cli", "new_msg", json!({"body": "via api"})))
        .await;
    let o = gateway(&cfg0, &["publish", "room:cli", "phx_close", "{}"]).await;
    assert_eq!(code(&o), 1, "a reserved event is refused: {}", show(&o));
    let o = gateway(&cfg0, &["publish", "room:cli", "new_msg", "[1]"]).await;
    assert_eq!(code(&o), 64, "{}", show(&o));

    // pods, topics, topic: tables, and --json.
    let pods = until("both pods answer", SETTLE, || async {
        let o = gateway(&cfg0, &["pods", "--json"]).await;
        let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())?;
        if code(&o) == 0 && v["pods"].as_array().map_or(0, Vec::len) == 2 {
            Ok(v)
        } else {
            Err(show(&o))
        }
    })
    .await;
    assert_eq!(pods["missing"], json!([]));
    let o = gateway(&cfg1, &["pods"]).await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    let table = stdout(&o);
    assert!(table.starts_with("POD"), "{table}");
    assert_eq!(table.lines().count(), 3, "a header and two pods: {table}");
    let o = gateway(&cfg0, &["topics", "--prefix", "room:"]).await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with("room:cli"))
        .map(str::to_owned);
    let cols: Vec<String> = line
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(cols, ["room:cli", "2", "2"], "{}", show(&o));
    let o = gateway(&cfg0, &["topic", "room:cli"]).await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).starts_with("room:cli: 2 subscriber(s)"),
        "{}",
        show(&o)
    );
    let o = gateway(&cfg0, &["topic", "room:cli", "--json"]).await;
    let t: Value = serde_json::from_slice(&o.stdout).expect("json");
    let user_conn = t["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user"] == "42")
        .expect("the token's user listed")["conn"]
        .as_str()
        .unwrap()
        .to_owned();

    // disconnect --topic: phx_close, still connected; then the connection.
    let o = gateway(
        &cfg0,
        &["disconnect", "--topic", "room:cli", "--conn", &user_conn],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(stdout(&o).trim(), "removed 1", "{}", show(&o));
    let f = user.recv().await;
    assert_eq!(
        (&f[2], &f[3]),
        (&json!("room:cli"), &json!("phx_close")),
        "{f}"
    );
    user.heartbeat("h1").await;
    let o = gateway(&cfg0, &["disconnect", "--user", "42"]).await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(stdout(&o).trim(), "disconnected 1", "{}", show(&o));
    user.expect_close().await;

    // Exit codes: a wrong key, an unreachable pod, bad usage, a silent pod.
    let o = gateway(&cfg0, &["pods", "--key", "wrong"]).await;
    assert_eq!(code(&o), 1, "{}", show(&o));
    let o = gateway(&cfg0, &["pods", "--url", "http://127.0.0.1:1"]).await;
    assert_eq!(code(&o), 69, "{}", show(&o));
    let o = gateway(&cfg0, &["token", "--sub", "1", "--ttl", "soon"]).await;
    assert_eq!(code(&o), 64, "{}", show(&o));
    let o = gateway(&cfg0, &["disconnect"]).await;
    assert_eq!(code(&o), 2, "clap's usage error: {}", show(&o));
    cluster.pods[1].pause();
    let o = gateway(&cfg0, &["pods"]).await;
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not answer"),
        "{}",
        show(&o)
    );
    cluster.pods[1].resume();
}

#[tokio::test]
async fn publish_without_redis_needs_a_pod() {
    let pod = pod().start().await;
    let cfg = pod.config_path().to_owned();
    let o = gateway(&cfg, &["publish", "room:x", "new_msg"]).await;
    assert_eq!(code(&o), 64, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--url"),
        "{}",
        show(&o)
    );
    let mut c = pod.client().await;
    c.join("room:x", "1").await;
    let url = format!("http://{}", pod.addr);
    let o = gateway(&cfg, &["publish", "room:x", "new_msg", "--url", &url]).await;
    assert_eq!(code(&o), 0, "{}", show(&o));
    c.expect(broadcast("room:x", "new_msg", json!({}))).await;
}
