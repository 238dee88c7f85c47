//! Redis as operators run it, against real servers: TLS with a private CA
//! and client certificates (on one server and on a Cluster), an ACL user with exactly the rights
//! docs/redis.md's line grants, Sentinel failing over, and each way of
//! getting the connection wrong (password, ACL, DNS, refused port,
//! untrusted certificate) showing in the log, `/metrics` and `/readyz`.
//!
//! The pods run config/example.toml's rules (`room:*` with history and
//! presence), with lifecycle events on `private:*`, so every kind of Redis
//! connection the gateway makes is exercised.
//!
//! Needs `redis-server` (built with TLS, as Debian's is) and `openssl`.

use gateway::config::{Config, LifecycleRule};
use serde_json::{json, Value};
use std::time::Duration;
use test_support::redis_sentinel::{SentinelSet, MASTER};
use test_support::redis_tls::{Certs, TlsRedis};
use test_support::scrape::sample;
use test_support::temp::{prefix, repo_path};
use test_support::wait::until;
use test_support::{GatewayBuilder, GatewayProcess, LpClient, PhxClient, RedisServer, SETTLE};

/// Bounds a failover: Sentinel's `down-after` (1 s), its election, the
/// promotion and the pods' next connect, on a loaded machine.
const FAILOVER: Duration = Duration::from_secs(40);

/// config/example.toml with lifecycle events on `private:*` and pushes of
/// `fwd:*` forwarded to the stream `in:chat`, on `prefix`.
fn example(prefix: &str) -> Config {
    let text = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
    let forward = r#"
[[channel]]
pattern = "fwd:*"
events = ["new_msg"]
mode = "forward"

[channel.forward]
stream = "chat"
"#;
    let mut c = Config::parse(&format!("{text}\n{forward}"), "config/example.toml").unwrap();
    c.redis.prefix = prefix.into();
    c.server.drain_delay_ms = 0;
    c.server.drain_period_ms = 0;
    c.server.max_connections_per_source = 0;
    c.server.connection_rate_per_source = 0;
    for socket in &mut c.sockets {
        if let Some(jwt) = &mut socket.jwt {
            jwt.secret = Some(test_support::jwt::SECRET.into());
        }
    }
    for rule in &mut c.channels {
        if rule.pattern == "private:*" {
            rule.lifecycle = Some(LifecycleRule {
                stream: "events".into(),
                max_len: 1000,
            });
        }
    }
    c
}

fn pod(config: Config) -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).config(config)
}

/// Joins `room:lobby` with presence and asks for the last messages; the
/// join reply.
async fn join_room(c: &mut PhxClient, user: &str) -> Value {
    c.join_with(
        "room:lobby",
        "1",
        json!({"user": user, "history": {"last": 5}}),
    )
    .await
}

/// [`join_room`], not asserting: the reply's status.
async fn try_join_room(c: &mut PhxClient, user: &str) -> String {
    c.send(json!(["1", "1", "room:lobby", "phx_join", {"user": user}]))
        .await;
    loop {
        let v = c.recv().await;
        if v[3] == "phx_reply" && v[1] == "1" {
            return v[4]["status"].as_str().unwrap_or("").to_owned();
        }
    }
}

/// Reads `c`'s frames until one satisfies `want`; fails after `within`.
async fn recv_until(
    c: &mut PhxClient,
    what: &str,
    within: Duration,
    want: impl Fn(&Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        if let Some(test_support::Received::Text(v)) =
            c.next_within(Duration::from_millis(500)).await
        {
            if want(&v) {
                return;
            }
            seen.push(v);
        }
    }
    panic!("{what}: not received within {within:?}; got {seen:?}");
}

/// Two pods on one Redis (`admin` reaches it as the default user) deliver
/// each other's broadcasts, keep history, share presence, relay a
/// long-poll session's requests and forward a push to a backend.
async fn pods_work_together(config: Config, admin: Option<&RedisServer>) {
    let a = pod(config.clone()).start().await;
    let b = pod(config).start().await;
    redis_up(&a).await;
    redis_up(&b).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let reply = join_room(&mut ca, "ann").await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let reply = join_room(&mut cb, "bob").await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    // Presence written through Redis: ann's pod sees bob's join.
    recv_until(&mut ca, "bob in ann's presence", SETTLE, |v| {
        (v[3] == "presence_diff" && v[4]["joins"].get("bob").is_some())
            || (v[3] == "presence_state" && v[4].get("bob").is_some())
    })
    .await;
    // A push on a's pod reaches b's client through Redis, with a position
    // from the history library.
    ca.send(json!(["1", "2", "room:lobby", "new_msg", {"body": "hello"}]))
        .await;
    recv_until(&mut cb, "the broadcast on pod b", SETTLE, |v| {
        v[3] == "new_msg" && v[4]["body"] == "hello"
    })
    .await;
    // History read back on a new join.
    let mut cc = b.client().await;
    let reply = join_room(&mut cc, "cy").await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    recv_until(&mut cc, "the kept message replayed", SETTLE, |v| {
        v[3] == "new_msg" && v[4]["body"] == "hello"
    })
    .await;
    // A long-poll session of pod a, its join posted to pod b: relayed to a
    // through Redis.
    let mut lp = LpClient::new(a.addr, "vsn=2.0.0");
    lp.open().await;
    lp.addr = b.addr;
    assert_eq!(
        lp.post(&[json!(["1", "1", "room:lp", "phx_join", {"user": "lp"}])])
            .await,
        200
    );
    let mut replies = Vec::new();
    while replies.is_empty() {
        replies = test_support::longpoll::decode(&lp.get().await);
    }
    assert_eq!(replies[0][3], "phx_reply", "{replies:?}");
    assert_eq!(replies[0][4]["status"], "ok", "{replies:?}");
    // A forwarded push: in the stream, answered by a "backend" on the
    // pod's reply channel (single server only: the test's own commands do
    // not follow a cluster's slots).
    if let Some(admin) = admin {
        forwarded_push(&a, admin).await;
    }
    for p in [&a, &b] {
        let (status, body) = p.get("/readyz").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let (_, metrics) = p.get("/metrics").await.unwrap();
        assert_eq!(sample(&metrics, "gateway_redis_up", &[]), Some(1.0));
    }
}

/// A push of `fwd:1` on `a` lands in the stream; the answer published to
/// the pod's reply channel comes back as the push's reply.
async fn forwarded_push(a: &GatewayProcess, admin: &RedisServer) {
    let mut fwd = a.client().await;
    fwd.join("fwd:1", "1").await;
    fwd.send(json!(["1", "2", "fwd:1", "new_msg", {"body": "in"}]))
        .await;
    let stream = a.channel("in:chat");
    let entry: Vec<(String, Vec<String>)> = {
        let (admin, stream) = (admin, &stream);
        until("the push in the stream", SETTLE, || async move {
            let out: redis::Value = admin
                .conn()
                .await
                .cmd(&["XREVRANGE", stream, "+", "-", "COUNT", "1"])
                .await;
            let entries: Vec<(String, Vec<String>)> =
                redis::from_redis_value(out).map_err(|e| e.to_string())?;
            if entries.is_empty() {
                Err("empty".to_owned())
            } else {
                Ok(entries)
            }
        })
        .await
    };
    let fields = &entry[0].1;
    let field = |name: &str| {
        let i = fields.iter().position(|f| f == name).unwrap();
        fields[i + 1].clone()
    };
    let answer = json!({"ref": field("reply_ref"), "status": "ok", "response": {"got": true}});
    assert_eq!(
        admin.publish(&field("reply_to"), &answer.to_string()).await,
        1
    );
    fwd.expect(test_support::reply(
        Some("1"),
        "2",
        "fwd:1",
        "ok",
        json!({"got": true}),
    ))
    .await;
}

/// Waits until the pod's subscriber connection is up.
async fn redis_up(p: &GatewayProcess) {
    until("gateway_redis_up 1", SETTLE, || async {
        let (_, metrics) = p.get("/metrics").await.ok_or("no answer")?;
        match sample(&metrics, "gateway_redis_up", &[]) {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Waits until `/readyz` fails naming `cause`, and the failure is counted.
async fn unready_because(p: &GatewayProcess, cause: &str, address: &str) -> String {
    let body = until(&format!("/readyz failing with {cause}"), SETTLE, || async {
        let (status, body) = p.get("/readyz").await.ok_or("no answer")?;
        if status == 503 && body.contains(&format!("({cause})")) && body.contains(address) {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    })
    .await;
    let (_, metrics) = p.get("/metrics").await.unwrap();
    let n = sample(&metrics, "gateway_redis_errors_total", &[("cause", cause)]);
    assert!(n.is_some_and(|n| n >= 1.0), "{cause}: {n:?}\n{metrics}");
    assert!(
        !body.contains("s3cret") && !p.log().contains("s3cret"),
        "a password leaked:\n{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let certs = Certs::generate();
    let redis = TlsRedis::start(&certs, true, &[]).await;
    let mut c = example(&prefix("ops"));
    c.redis.url = Some(redis.url(""));
    c.redis.tls_ca_file = Some(certs.path("ca.crt"));
    c.redis.tls_cert_file = Some(certs.path("client.crt"));
    c.redis.tls_key_file = Some(certs.path("client.key"));
    pods_work_together(c, Some(&redis.server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_a_cluster() {
    let certs = Certs::generate();
    let cluster = test_support::RedisCluster::start_tls(&certs).await;
    let mut c = example(&prefix("ops"));
    c.redis.cluster = true;
    c.redis.url = Some(cluster.tls_seeds());
    c.redis.tls_ca_file = Some(certs.path("ca.crt"));
    // Lifecycle events need a single server.
    for rule in &mut c.channels {
        rule.lifecycle = None;
    }
    pods_work_together(c, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_an_untrusted_server_unless_told_to_be_insecure() {
    let certs = Certs::generate();
    let redis = TlsRedis::start(&certs, false, &[]).await;
    let mut c = example(&prefix("ops"));
    c.redis.url = Some(redis.url(""));
    // A CA that did not sign the server's certificate.
    c.redis.tls_ca_file = Some(certs.path("other-ca.crt"));
    let p = pod(c.clone()).redis_down().start().await;
    let body = unready_because(&p, "tls", "127.0.0.1").await;
    eprintln!("{body}");

    // The development switch: any certificate.
    c.redis.tls_ca_file = None;
    c.redis.tls_insecure = true;
    pods_work_together(c, Some(&redis.server)).await;
}

/// The ACL line of docs/redis.md, for a user `gateway` with password
/// `pw`, on `prefix` instead of `phx:`.
fn documented_acl(prefix: &str, pw: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(repo_path("docs/redis.md")).unwrap();
    let line = doc
        .lines()
        .find(|l| l.trim_start().starts_with("ACL SETUSER gateway "))
        .expect("docs/redis.md has an `ACL SETUSER gateway ...` line");
    line.split_whitespace()
        .map(|w| {
            w.replace("phx:", prefix)
                .replace(">PASSWORD", &format!(">{pw}"))
        })
        .collect()
}

async fn acl_setuser(redis: &RedisServer, args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ok: String = redis.conn().await.cmd(&args).await;
    assert_eq!(ok, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_serves_everything() {
    let redis = RedisServer::start().await;
    let pre = prefix("ops");
    acl_setuser(&redis, &documented_acl(&pre, "gwpass")).await;
    let mut c = example(&pre);
    let port = redis.port();
    c.redis.url = Some(format!("redis://gateway:gwpass@127.0.0.1:{port}/0"));
    pods_work_together(c.clone(), Some(&redis)).await;

    // Lifecycle events need their own commands: a join of private:* lands
    // in the stream.
    let p = pod(c).start().await;
    redis_up(&p).await;
    let mut user = p.client_with_token(&test_support::jwt::token("42")).await;
    let reply = user.join("private:ops", "1").await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let key = format!("{pre}events");
    let redis = &redis;
    let key = &key;
    until("the join in the lifecycle stream", SETTLE, || async move {
        let n: i64 = redis.conn().await.cmd(&["XLEN", key]).await;
        if n >= 1 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_serves_a_cluster() {
    let pre = prefix("ops");
    // ACL users are per node: the line runs on every master.
    let acl = documented_acl(&pre, "gwpass");
    let cluster = test_support::RedisCluster::start().await;
    let args: Vec<&str> = acl.iter().map(String::as_str).collect();
    for i in 0..3 {
        let ok: String = cluster.cmd(i, &args).await;
        assert_eq!(ok, "OK");
    }
    let mut c = example(&pre);
    c.redis.cluster = true;
    let seeds: Vec<String> = (0..2)
        .map(|i| format!("redis://gateway:gwpass@127.0.0.1:{}", cluster.port(i)))
        .collect();
    c.redis.url = Some(seeds.join(","));
    // Lifecycle events need a single server.
    for rule in &mut c.channels {
        rule.lifecycle = None;
    }
    pods_work_together(c, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_denials_are_reported() {
    let redis = RedisServer::start().await;
    let pre = prefix("ops");
    acl_setuser(&redis, &documented_acl(&pre, "s3cret")).await;
    let port = redis.port();
    let address = format!("127.0.0.1:{port}");

    // A wrong password.
    let mut c = example(&pre);
    c.redis.url = Some(format!("redis://gateway:wrong-s3cret@{address}/0"));
    let p = pod(c.clone()).redis_down().start().await;
    unready_because(&p, "auth", &address).await;
    // Joins say why they fail, at once.
    let mut client = p.client().await;
    let reply = client.try_join("room:lobby", "1").await;
    assert_eq!(reply[4]["status"], "error", "{reply}");
    drop(p);

    // A user whose ACL lacks the prefix's channels.
    let mut conn = redis.conn().await;
    let _: String = conn
        .cmd(&["ACL", "SETUSER", "gateway", "resetchannels"])
        .await;
    c.redis.url = Some(format!("redis://gateway:s3cret@{address}/0"));
    let p = pod(c.clone()).redis_down().start().await;
    let body = unready_because(&p, "acl", &address).await;
    assert!(
        body.contains("NOPERM") || body.contains("permission"),
        "{body}"
    );
    drop(p);

    // Nothing listens there.
    let free = test_support::free_port();
    c.redis.url = Some(format!("redis://:s3cret@127.0.0.1:{free}/0"));
    let p = pod(c.clone()).redis_down().start().await;
    unready_because(&p, "refused", &format!("127.0.0.1:{free}")).await;
    drop(p);

    // A name that does not resolve.
    c.redis.url = Some("redis://:s3cret@redis.invalid:6379/0".into());
    let p = pod(c).redis_down().start().await;
    unready_because(&p, "dns", "redis.invalid:6379").await;
    // Logged with cause and address, the password hidden, and not once per
    // retry.
    until("the failure logged", SETTLE, || async {
        let log = p.log();
        if log.contains("redis failure")
            && log.contains("cause=dns")
            && log.contains("address=redis.invalid:6379")
        {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    let logged = p.log().matches("redis failure").count();
    assert!(logged <= 3, "logged {logged} times:\n{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let pre = prefix("ops");
    // Both data servers have the documented ACL user; the master is found
    // through the sentinels and authenticated with the URL's user.
    let mut user = vec!["--user".to_owned()];
    user.extend(documented_acl(&pre, "gwpass").into_iter().skip(2));
    let set = SentinelSet::start(&user).await;
    let mut c = example(&pre);
    c.redis.url = Some("redis://gateway:gwpass@ignored/0".into());
    c.redis.sentinel = Some(gateway::config::SentinelConfig {
        master: MASTER.into(),
        nodes: set.nodes(),
        ..Default::default()
    });
    let a = pod(c.clone()).start().await;
    let b = pod(c).start().await;
    redis_up(&a).await;
    redis_up(&b).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    assert_eq!(join_room(&mut ca, "ann").await[4]["status"], "ok");
    assert_eq!(join_room(&mut cb, "bob").await[4]["status"], "ok");
    ca.send(json!(["1", "2", "room:lobby", "new_msg", {"body": "before"}]))
        .await;
    recv_until(&mut cb, "the broadcast before the failover", SETTLE, |v| {
        v[3] == "new_msg" && v[4]["body"] == "before"
    })
    .await;

    let old = set.master().await;
    let mut set = set;
    let killed = std::time::Instant::now();
    set.servers[old].kill();
    set.wait_master(1 - old, FAILOVER).await;

    // Both pods follow the new master. Their channels stopped when Redis
    // went (phoenix.js rejoins them by itself); new joins on each pod, and
    // a push on a reaches b again.
    let deadline = tokio::time::Instant::now() + FAILOVER;
    let mut n = 0;
    loop {
        n += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery within {FAILOVER:?} of the failover"
        );
        let mut ca = a.client().await;
        let mut cb = b.client().await;
        let user = format!("u{n}");
        if try_join_room(&mut ca, &user).await != "ok"
            || try_join_room(&mut cb, &user).await != "ok"
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let tag = format!("after-{n}");
        ca.send(json!(["1", "2", "room:lobby", "new_msg", {"body": tag}]))
            .await;
        let mut got = false;
        while let Some(test_support::Received::Text(v)) =
            cb.next_within(Duration::from_millis(2000)).await
        {
            if v[3] == "new_msg" && v[4]["body"] == tag {
                got = true;
                break;
            }
        }
        if got {
            break;
        }
    }
    eprintln!(
        "delivery through the new master {:?} after the kill",
        killed.elapsed()
    );
    for p in [&a, &b] {
        let (status, body) = p.get("/readyz").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}
