//! Forwarded pushes on a Redis Cluster (docs/backends.md): the stream is a
//! key in its own slot, and pods listen for answers with sharded pub/sub,
//! so a backend answers with `SPUBLISH`. The rest of forwarding (workers,
//! timeouts, limits, Redis down) is tested with phoenix.js and the example
//! workers in compat/test/backends.test.js.

use gateway::config::Config;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use test_support::redis_server::redis_cli;
use test_support::{wait, GatewayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn forward_rule(c: &mut Config) {
    let parsed = Config::parse(
        r#"
[[channel]]
pattern = "fwd:*"
events = ["new_msg"]
mode = "forward"

[channel.forward]
stream = "chat"
reply_timeout_ms = 20000
"#,
        "forward test",
    )
    .expect("the test's rule parses");
    c.channels.extend(parsed.channels);
}

/// The newest entry of `stream` as its fields, read through any node
/// (`redis-cli -c` follows MOVED to the shard of the stream's slot).
async fn newest_entry(port: u16, stream: &str) -> Result<HashMap<String, String>, String> {
    let out = redis_cli(port, &["-c", "XREVRANGE", stream, "+", "-", "COUNT", "1"]).await;
    let lines: Vec<&str> = out.lines().collect();
    let fields: HashMap<String, String> = lines
        .get(1..)
        .unwrap_or_default()
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string())))
        .collect();
    if fields.contains_key("reply_to") {
        Ok(fields)
    } else {
        Err(out)
    }
}

#[tokio::test]
async fn on_a_redis_cluster_a_backend_reads_the_stream_and_answers_with_spublish() {
    let cluster = test_support::RedisCluster::start().await;
    let pod = GatewayProcess::builder(BIN)
        .redis(&cluster.seeds())
        .cluster()
        .configure(forward_rule)
        .start()
        .await;
    let stream = pod.channel("in:chat");
    let mut c = pod.client().await;
    c.join("fwd:1", "1").await;
    c.send(json!(["1", "2", "fwd:1", "new_msg", {"body": "hi"}]))
        .await;

    let entry = wait::until("the push in the stream", Duration::from_secs(10), || {
        newest_entry(cluster.port(0), &stream)
    })
    .await;
    assert_eq!(entry["topic"], "fwd:1");
    assert_eq!(entry["payload"], r#"{"body":"hi"}"#);
    let answer = json!({
        "ref": entry["reply_ref"],
        "status": "ok",
        "response": {"stored": true},
        "broadcasts": [{"topic": "fwd:1", "event": "new_msg", "payload": {"body": "hi"}}],
    })
    .to_string();
    let receivers = redis_cli(
        cluster.port(0),
        &["-c", "SPUBLISH", &entry["reply_to"], &answer],
    )
    .await;
    assert_eq!(
        receivers.trim(),
        "1",
        "the pod listens on its reply channel's shard"
    );
    c.expect(test_support::reply(
        Some("1"),
        "2",
        "fwd:1",
        "ok",
        json!({"stored": true}),
    ))
    .await;
    c.expect(test_support::broadcast(
        "fwd:1",
        "new_msg",
        json!({"body": "hi"}),
    ))
    .await;

    let slot: i64 = cluster.cmd(0, &["CLUSTER", "KEYSLOT", &stream]).await;
    let owner = cluster.owner(&stream).await;
    let len: i64 = cluster.cmd(owner, &["XLEN", &stream]).await;
    assert_eq!(len, 1, "the stream lives on the shard of slot {slot}");
}
