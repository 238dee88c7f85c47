//! The admin API (docs/admin.md) on real pods sharing one `redis-server`:
//! fleet-wide pods, topics and one topic answered by any pod, a paused pod
//! named as not answering, disconnecting by connection id, socket id and
//! claim on another pod, removing a client from a topic (`phx_close`, the
//! connection stays), batch publishing, the key, and one pod alone on the
//! in-memory broker.
//!
//! Needs `redis-server` on PATH.

use serde_json::{json, Value};
use test_support::http::Request;
use test_support::jwt::token;
use test_support::wait::{until, SETTLE};
use test_support::{broadcast, Cluster, GatewayBuilder, GatewayProcess, PhxClient};

const KEY: &str = "admin-key-for-tests";

fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).configure(|c| {
        c.admin.key = Some(KEY.into());
        c.admin.timeout_ms = 2000;
    })
}

async fn get(pod: &GatewayProcess, route: &str) -> Value {
    let r = Request::get(&format!("/admin/api/{route}"))
        .bearer(KEY)
        .send(pod.addr)
        .await;
    assert_eq!(r.status, 200, "GET {route}: {}", r.body);
    r.json()
}

async fn post(pod: &GatewayProcess, route: &str, body: Value) -> Value {
    let r = Request::post(&format!("/admin/api/{route}"))
        .bearer(KEY)
        .json(&body.to_string())
        .send(pod.addr)
        .await;
    assert_eq!(r.status, 200, "POST {route} {body}: {}", r.body);
    r.json()
}

/// Asks `pod` for the fleet until all `n` pods answer (each pod joins the
/// roster and listens for questions just after it starts).
async fn all_answer(pod: &GatewayProcess, n: usize) -> Value {
    until(&format!("{n} pods answer"), SETTLE, || async {
        let v = get(pod, "pods").await;
        let answered = v["pods"].as_array().map_or(0, Vec::len);
        if answered == n && v["missing"] == json!([]) {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await
}

fn pod_ids(pods: &Value) -> Vec<String> {
    pods["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_wide_answers_name_a_pod_that_does_not_answer() {
    let mut cluster = Cluster::start(pod(), 3).await;
    let pods = all_answer(&cluster.pods[2], 3).await;
    assert_eq!(pod_ids(&pods).len(), 3);
    let mut addresses: Vec<String> = pods["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = cluster.pods.iter().map(|p| p.addr.to_string()).collect();
    addresses.sort();
    want.sort();
    assert_eq!(addresses, want, "each pod lists the address it bound");
    for p in pods["pods"].as_array().unwrap() {
        assert_eq!(p["ready"], true, "{p}");
        assert_eq!(p["draining"], false, "{p}");
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"), "{p}");
        assert!(p["node"].as_str().is_some_and(|n| !n.is_empty()), "{p}");
    }

    // ann on pod 0 in room:a; an anonymous client on pod 1 in room:a and room:b.
    let mut ann = cluster.pods[0].client_with_token(&token("ann")).await;
    ann.join("room:a", "1").await;
    let mut anon = cluster.pods[1].client().await;
    anon.join("room:a", "1").await;
    anon.join("room:b", "2").await;

    let pods = get(&cluster.pods[2], "pods").await;
    let ws: u64 = pods["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["connections"]["websocket"].as_u64().unwrap())
        .sum();
    assert_eq!(ws, 2, "{pods}");
    let channels: u64 = pods["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["channels"].as_u64().unwrap())
        .sum();
    assert_eq!(channels, 3, "{pods}");

    let topics = get(&cluster.pods[2], "topics?prefix=room:").await;
    let listed: Vec<(String, u64, usize)> = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().unwrap().to_owned(),
                t["subscribers"].as_u64().unwrap(),
                t["pods"].as_object().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![("room:a".into(), 2, 2), ("room:b".into(), 1, 1)],
        "{topics}"
    );
    // Socket-id topics (users_socket:ann) are no channels: not listed.
    let all = get(&cluster.pods[0], "topics").await;
    assert_eq!(all["topics"].as_array().unwrap().len(), 2, "{all}");
    // A prefix, pages, and the busiest first.
    let b = get(&cluster.pods[0], "topics?prefix=room:b").await;
    assert_eq!(b["topics"][0]["topic"], "room:b", "{b}");
    assert_eq!(b["topics"].as_array().unwrap().len(), 1, "{b}");
    let page1 = get(&cluster.pods[0], "topics?limit=1").await;
    assert_eq!(page1["topics"][0]["topic"], "room:a", "{page1}");
    assert_eq!(page1["next"], "room:a", "{page1}");
    let page2 = get(&cluster.pods[0], "topics?limit=1&after=room:a").await;
    assert_eq!(page2["topics"][0]["topic"], "room:b", "{page2}");
    assert_eq!(page2["next"], Value::Null, "{page2}");
    let busiest = get(&cluster.pods[1], "topics?sort=subscribers&limit=1").await;
    assert_eq!(busiest["topics"][0]["topic"], "room:a", "{busiest}");

    // One topic: both connections, ann's named by her claim and socket id.
    let a = get(&cluster.pods[2], "topic?topic=room:a").await;
    assert_eq!(a["subscribers"], 2, "{a}");
    let conns = a["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{a}");
    let ann_conn = conns
        .iter()
        .find(|c| c["user"] == "ann")
        .expect("ann listed");
    assert_eq!(ann_conn["socket_id"], "users_socket:ann", "{a}");
    assert_eq!(ann_conn["transport"], "websocket", "{a}");
    assert_eq!(a["history"], Value::Null, "room:* keeps no history here");

    // A pod that stops answering is named, and the others still answer.
    let silent = pod_ids(&get(&cluster.pods[1], "pods").await);
    cluster.pods[1].pause();
    let partial = get(&cluster.pods[0], "pods").await;
    assert_eq!(partial["pods"].as_array().unwrap().len(), 2, "{partial}");
    let missing: Vec<String> = serde_json::from_value(partial["missing"].clone()).unwrap();
    assert_eq!(missing.len(), 1, "{partial}");
    assert!(silent.contains(&missing[0]), "{partial}");
    let answered = pod_ids(&partial);
    assert!(!answered.contains(&missing[0]), "{partial}");
    let t = get(&cluster.pods[0], "topics").await;
    assert_eq!(t["missing"], json!(missing), "{t}");
    cluster.pods[1].resume();
    all_answer(&cluster.pods[0], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_removals_reach_clients_on_other_pods() {
    let cluster = Cluster::start(pod(), 2).await;
    all_answer(&cluster.pods[0], 2).await;

    // By claim: every connection of sub=bob, on pod 1, asked on pod 0.
    let mut bob1 = cluster.pods[1].client_with_token(&token("bob")).await;
    let mut bob2 = cluster.pods[1].client_with_token(&token("bob")).await;
    let mut carol = cluster.pods[1].client_with_token(&token("carol")).await;
    let r = post(
        &cluster.pods[0],
        "disconnect",
        json!({"claim": {"name": "sub", "value": "bob"}}),
    )
    .await;
    assert_eq!(r["disconnected"], 2, "{r}");
    assert_eq!(r["missing"], json!([]), "{r}");
    bob1.expect_close().await;
    bob2.expect_close().await;
    carol.heartbeat("h1").await;

    // By socket id.
    let r = post(
        &cluster.pods[0],
        "disconnect",
        json!({"socket_id": "users_socket:carol"}),
    )
    .await;
    assert_eq!(r["disconnected"], 1, "{r}");
    carol.expect_close().await;

    // By connection id, as the topic listing names it.
    let mut dave = cluster.pods[1].client().await;
    dave.join("room:ops", "1").await;
    let mut erin = cluster.pods[0].client().await;
    erin.join("room:ops", "1").await;
    let listing = get(&cluster.pods[0], "topic?topic=room:ops").await;
    let ids: Vec<&str> = listing["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conn"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listing}");
    // Which one is dave's: remove each in turn and see who gets phx_close.
    let r = post(
        &cluster.pods[0],
        "remove",
        json!({"topic": "room:ops", "conn": ids[0]}),
    )
    .await;
    assert_eq!(r["removed"], 1, "{r}");
    let closed = |f: &Value| f[2] == "room:ops" && f[3] == "phx_close";
    let (mut removed, mut kept) = tokio::select! {
        f = dave.recv() => { assert!(closed(&f), "{f}"); (dave, erin) }
        f = erin.recv() => { assert!(closed(&f), "{f}"); (erin, dave) }
    };
    // Still connected, no longer subscribed: a broadcast reaches only the other.
    removed.heartbeat("h2").await;
    let (status, _) = cluster.pods[0]
        .api_broadcast("room:ops", "new_msg", json!({"body": "after"}))
        .await;
    assert_eq!(status, 200);
    kept.expect(broadcast("room:ops", "new_msg", json!({"body": "after"})))
        .await;
    removed.heartbeat("h3").await;
    let after = get(&cluster.pods[1], "topic?topic=room:ops").await;
    assert_eq!(after["subscribers"], 1, "{after}");
    // The other one closed by its id: the whole connection.
    let r = post(&cluster.pods[1], "disconnect", json!({"conn": ids[1]})).await;
    assert_eq!(r["disconnected"], 1, "{r}");
    kept.expect_close().await;

    // Names that match nothing close nothing.
    let r = post(&cluster.pods[0], "disconnect", json!({"conn": "nobody/1"})).await;
    assert_eq!(r["disconnected"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_publish_each_message_and_the_key_is_required() {
    let cluster = Cluster::start(pod(), 2).await;
    let mut c = cluster.pods[1].client().await;
    c.join("room:batch", "1").await;

    let r = post(
        &cluster.pods[0],
        "broadcast",
        json!({"messages": [
            {"topic": "room:batch", "event": "new_msg", "payload": {"n": 1}},
            {"topic": "room:batch", "event": "phx_reply", "payload": {}},
            {"topic": "room:batch", "event": "new_msg", "payload": {"n": 2}},
        ]}),
    )
    .await;
    assert_eq!(r["published"], 2, "{r}");
    assert_eq!(r["results"][0], json!({"ok": true}), "{r}");
    assert!(r["results"][1]["error"].is_string(), "{r}");
    c.expect(broadcast("room:batch", "new_msg", json!({"n": 1})))
        .await;
    c.expect(broadcast("room:batch", "new_msg", json!({"n": 2})))
        .await;

    for route in ["pods", "topics", "topic?topic=room:batch"] {
        let r = Request::get(&format!("/admin/api/{route}"))
            .bearer("wrong")
            .send(cluster.pods[0].addr)
            .await;
        assert_eq!(r.status, 401, "{route}");
    }
    // The publish API's key is not the admin key.
    let r = Request::get("/admin/api/pods")
        .bearer(&cluster.pods[0].api_key)
        .send(cluster.pods[0].addr)
        .await;
    assert_eq!(r.status, 401);
    let r = Request::post("/admin/api/disconnect")
        .bearer(KEY)
        .json(r#"{"who": 1}"#)
        .send(cluster.pods[0].addr)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = Request::get("/admin/api/topics?limit=x")
        .bearer(KEY)
        .send(cluster.pods[0].addr)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn one_pod_on_the_memory_broker_is_the_fleet() {
    let pod = pod().start().await;
    let pods = get(&pod, "pods").await;
    assert_eq!(pods["pods"].as_array().unwrap().len(), 1, "{pods}");
    assert_eq!(pods["missing"], json!([]));
    let mut c: PhxClient = pod.client_with_token(&token("zoe")).await;
    c.join("room:solo", "1").await;
    let t = get(&pod, "topics").await;
    assert_eq!(t["topics"][0]["topic"], "room:solo", "{t}");
    let r = post(
        &pod,
        "disconnect",
        json!({"claim": {"name": "sub", "value": "zoe"}}),
    )
    .await;
    assert_eq!(r["disconnected"], 1, "{r}");
    c.expect_close().await;
    // Admin off: no routes.
    let off = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .start()
        .await;
    let r = Request::get("/admin/api/pods")
        .bearer(KEY)
        .send(off.addr)
        .await;
    assert_eq!(r.status, 404);
}
