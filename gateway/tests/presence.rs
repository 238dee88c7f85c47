//! Presence on one node (the in-memory broker): `[channel.presence]` rules
//! keyed by a join param or a token claim, the exact `presence_state` and
//! `presence_diff` shapes, two tabs of one key, leaves on leave and on
//! disconnect, and `track` / `update` / `untrack` from the Rust channel API.

use gateway::{
    AcceptAll, Channel, ChannelContext, Endpoint, HandleIn, JoinResult, Payload, Router, Socket,
};
use serde_json::{json, Value};
use std::time::Duration;
use test_support::jwt::{hs256, now, SECRET};
use test_support::{Member, PhxClient, TestServer, TIMEOUT};

fn config() -> String {
    format!(
        r#"
[presence]
batch_ms = 100

[[socket]]
path = "/socket"
[socket.jwt]
secret = "{SECRET}"

[[channel]]
pattern = "room:*"
[channel.presence]
key_param = "user"
meta_params = ["status"]
update_event = "set_status"

[[channel]]
pattern = "private:*"
policy = "token"
[channel.presence]
key_claim = "sub"
"#
    )
}

async fn member(server: &TestServer, topic: &str, jr: &str, params: Value) -> Member {
    Member::join(server.v2().await, topic, jr, params).await
}

#[tokio::test]
async fn state_on_join_then_diffs_with_phoenix_shapes() {
    let server = TestServer::from_toml(&config()).await;
    let mut a = server.v2().await;
    a.join_with(
        "room:shapes",
        "1",
        json!({"user": "alice", "status": "away", "secret": "x"}),
    )
    .await;
    // presence_state is pushed on this join: [join_ref, null, topic, ...].
    let state = a.recv().await;
    assert_eq!(state[0], "1");
    assert!(state[1].is_null());
    assert_eq!(state[3], "presence_state");
    let metas = state[4]["alice"]["metas"].as_array().unwrap();
    assert_eq!(metas.len(), 1, "{state}");
    let meta = metas[0].as_object().unwrap();
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["online_at", "phx_ref", "status"],
        "only whitelisted params: {state}"
    );
    assert_eq!(meta["status"], "away");
    assert!(meta["online_at"].as_str().unwrap().parse::<u64>().is_ok());
    let alice_ref = meta["phx_ref"].as_str().unwrap().to_owned();
    // Then the diff of the own join, a broadcast: [null, null, topic, ...].
    let diff = a.recv().await;
    assert_eq!(
        diff,
        json!([null, null, "room:shapes", "presence_diff", {
            "joins": {"alice": {"metas": [meta]}}, "leaves": {}
        }])
    );

    let mut b = member(&server, "room:shapes", "7", json!({"user": "bob"})).await;
    b.wait_for(&[("alice", 1), ("bob", 1)], TIMEOUT).await;
    let bob_join = a.recv().await;
    assert_eq!(bob_join[3], "presence_diff");
    let bob_meta = bob_join[4]["joins"]["bob"]["metas"][0].clone();
    assert_eq!(bob_join[4]["leaves"], json!({}));

    // bob leaves: alice gets his meta under leaves.
    b.client.leave("room:shapes", "7", "8").await;
    assert_eq!(
        a.recv().await,
        json!([null, null, "room:shapes", "presence_diff", {
            "joins": {}, "leaves": {"bob": {"metas": [bob_meta]}}
        }])
    );
    assert_ne!(alice_ref, bob_meta["phx_ref"]);
}

#[tokio::test]
async fn a_rule_update_event_changes_the_meta() {
    let server = TestServer::from_toml(&config()).await;
    let mut w = member(&server, "room:upd", "1", json!({"user": "w"})).await;
    let mut u = member(
        &server,
        "room:upd",
        "1",
        json!({"user": "u", "status": "online"}),
    )
    .await;
    w.wait_for(&[("w", 1), ("u", 1)], TIMEOUT).await;
    let old = w.view.state["u"][0].clone();
    u.client
        .send(json!(["1", "2", "room:upd", "set_status", {"status": "away", "other": 1}]))
        .await;
    let diff = loop {
        let f = w.client.recv().await;
        if f[3] == "presence_diff" && !f[4]["joins"]["u"].is_null() {
            break f;
        }
    };
    let new = &diff[4]["joins"]["u"]["metas"][0];
    assert_eq!(new["status"], "away");
    assert_eq!(new["online_at"], old["online_at"]);
    assert_eq!(new["phx_ref_prev"], old["phx_ref"]);
    assert!(new.get("other").is_none(), "only whitelisted params: {new}");
    assert_eq!(diff[4]["leaves"]["u"]["metas"][0], old);
    // The pusher got ok (frames for it may interleave with presence frames).
    loop {
        let f = u.client.recv().await;
        if f[1] == "2" {
            assert_eq!(f[4]["status"], "ok", "{f}");
            break;
        }
    }
}

#[tokio::test]
async fn an_update_pushed_right_after_the_join_is_kept() {
    let server = TestServer::from_toml(&config()).await;
    let mut w = member(&server, "room:early", "1", json!({"user": "w"})).await;
    let mut u = server.v2().await;
    u.send(json!(["1", "1", "room:early", "phx_join", {"user": "u", "status": "online"}]))
        .await;
    u.send(json!(["1", "2", "room:early", "set_status", {"status": "away"}]))
        .await;
    loop {
        let f = u.recv().await;
        if f[1] == "2" {
            assert_eq!(f[4]["status"], "ok", "{f}");
            break;
        }
    }
    w.wait_for(&[("w", 1), ("u", 1)], TIMEOUT).await;
    while w.view.state["u"][0]["status"] != "away" {
        let f = w.client.recv().await;
        w.view.apply("room:early", &f);
        assert_eq!(w.view.counts().len(), 2, "{:?}", w.view.state);
    }
}

#[tokio::test]
async fn two_tabs_are_one_key_with_two_metas_and_disconnect_leaves() {
    let server = TestServer::from_toml(&config()).await;
    let mut watcher = member(&server, "room:tabs", "1", json!({"user": "w"})).await;
    let tab1 = member(&server, "room:tabs", "1", json!({"user": "alice"})).await;
    let mut tab2 = member(&server, "room:tabs", "1", json!({"user": "alice"})).await;
    watcher.wait_for(&[("w", 1), ("alice", 2)], TIMEOUT).await;
    tab2.wait_for(&[("w", 1), ("alice", 2)], TIMEOUT).await;
    // Closing a tab's connection ends its presence only.
    tab1.client.close().await;
    watcher.wait_for(&[("w", 1), ("alice", 1)], TIMEOUT).await;
    tab2.wait_for(&[("w", 1), ("alice", 1)], TIMEOUT).await;
}

#[tokio::test]
async fn without_the_key_a_client_watches_and_a_bad_key_is_refused() {
    let server = TestServer::from_toml(&config()).await;
    let mut a = member(&server, "room:x", "1", json!({"user": "alice"})).await;
    a.wait_for(&[("alice", 1)], TIMEOUT).await;
    // No key: joined, gets the list, is not in it.
    let mut watcher = member(&server, "room:x", "1", json!({})).await;
    watcher.wait_for(&[("alice", 1)], TIMEOUT).await;
    let mut c = server.v2().await;
    c.send(json!(["1", "1", "room:x", "phx_join", {"user": ""}]))
        .await;
    assert_eq!(
        c.recv().await[4]["response"]["reason"],
        "the presence key, join param \"user\", must be a string of 1 to 256 bytes"
    );
    c.send(json!(["2", "2", "room:x", "phx_join", {"user": {"a": 1}}]))
        .await;
    assert_eq!(c.recv().await[4]["status"], "error");
    let big = "x".repeat(5000);
    c.send(json!(["3", "3", "room:x", "phx_join", {"user": "u", "status": big}]))
        .await;
    assert_eq!(
        c.recv().await[4]["response"]["reason"],
        "presence meta params take more than 4096 bytes"
    );
    let mut n = member(&server, "room:x", "4", json!({"user": 42})).await;
    n.wait_for(&[("alice", 1), ("42", 1)], TIMEOUT).await;
    watcher.wait_for(&[("alice", 1), ("42", 1)], TIMEOUT).await;
}

#[tokio::test]
async fn key_from_a_token_claim() {
    let server = TestServer::from_toml(&config()).await;
    let token = hs256(&json!({"sub": "carol", "exp": now() + 3600}));
    let mut c = server.connect("/socket", Some(&token)).await;
    // A param cannot choose the key of a claim-keyed rule.
    c.join_with("private:p", "1", json!({"user": "mallory"}))
        .await;
    let state = c.recv().await;
    assert_eq!(state[3], "presence_state");
    assert_eq!(
        state[4].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["carol"]
    );
}

/// A channel that tracks with the Rust API and updates on `status`.
struct Tracker;

#[async_trait::async_trait]
impl Channel for Tracker {
    type Info = ();

    async fn join(&mut self, _: &str, p: Payload, ctx: &mut ChannelContext<()>) -> JoinResult {
        let user = p.get("user").and_then(|v| v.as_str().map(String::from));
        let user = user.ok_or_else(|| Payload::json(&json!({"reason": "user"})))?;
        ctx.track(user.clone(), json!({"status": "online"}))
            .map_err(|e| Payload::json(&json!({"reason": e.to_string()})))?;
        assert!(ctx.track(user, json!({})).is_err(), "tracked twice");
        Ok(Payload::empty())
    }

    async fn handle_in(
        &mut self,
        event: &str,
        p: Payload,
        ctx: &mut ChannelContext<()>,
    ) -> HandleIn {
        let user = "u";
        match event {
            "status" => {
                ctx.update(user, json!({"status": p.get("status")}))
                    .unwrap();
                HandleIn::ok(Payload::empty())
            }
            "list" => HandleIn::ok(Payload::json(&ctx.presence_list().await.unwrap())),
            "state" => {
                ctx.push_presence_state().await.unwrap();
                HandleIn::NoReply
            }
            "untrack" => HandleIn::ok(json!({"was": ctx.untrack(user)})),
            _ => HandleIn::error(json!({})),
        }
    }
}

fn library_endpoint() -> std::sync::Arc<Endpoint> {
    let router = Router::new().channel("t:*", || Tracker);
    let pubsub = gateway::pubsub::PubSub::memory();
    let presence = gateway::Presence::new(
        &pubsub,
        gateway::PresenceConfig {
            batch: Duration::from_millis(10),
            ..Default::default()
        },
    );
    Endpoint::builder()
        .socket(Socket::new("/socket", AcceptAll, router))
        .pubsub(pubsub)
        .presence(presence)
        .build()
}

#[tokio::test]
async fn rust_api_track_update_untrack() {
    let server = TestServer::spawn(library_endpoint()).await;
    let mut w = member(&server, "t:1", "1", json!({"user": "w"})).await;
    w.client.send(json!(["1", "s", "t:1", "state", {}])).await;
    w.wait_for(&[("w", 1)], TIMEOUT).await;

    let mut u = server.v2().await;
    u.join_with("t:1", "1", json!({"user": "u"})).await;
    w.wait_for(&[("w", 1), ("u", 1)], TIMEOUT).await;
    let old_ref = w.view.state["u"][0]["phx_ref"].clone();

    // update: the new meta joins, the old leaves, phx_ref_prev names it.
    u.send(json!(["1", "2", "t:1", "status", {"status": "away"}]))
        .await;
    let diff = loop {
        let f = w.client.recv().await;
        if f[3] == "presence_diff" {
            break f;
        }
    };
    let joined = &diff[4]["joins"]["u"]["metas"][0];
    assert_eq!(joined["status"], "away");
    assert_eq!(joined["phx_ref_prev"], old_ref);
    assert_ne!(joined["phx_ref"], old_ref);
    assert_eq!(diff[4]["leaves"]["u"]["metas"][0]["phx_ref"], old_ref);
    w.view.diff(&diff[4]);
    assert_eq!(w.view.state["u"].len(), 1);
    assert_eq!(w.view.state["u"][0]["status"], "away");

    // list reflects it; untrack removes it.
    u.send(json!(["1", "3", "t:1", "list", {}])).await;
    let list = loop {
        let f = u.recv().await;
        if f[1] == "3" {
            break f;
        }
    };
    assert_eq!(list[4]["response"]["u"]["metas"][0]["status"], "away");
    u.send(json!(["1", "4", "t:1", "untrack", {}])).await;
    w.wait_for(&[("w", 1)], TIMEOUT).await;
    drop(u);
}

#[tokio::test]
async fn v1_clients_get_presence_too() {
    let server = TestServer::from_toml(&config()).await;
    let mut c = PhxClient::connect(&server.url("vsn=1.0.0")).await;
    c.send(json!({"topic": "room:v1", "event": "phx_join", "payload": {"user": "v"}, "ref": "1", "join_ref": "1"}))
        .await;
    assert_eq!(c.recv().await["payload"]["status"], "ok");
    let state = c.recv().await;
    assert_eq!(state["event"], "presence_state");
    assert_eq!(state["payload"]["v"]["metas"].as_array().unwrap().len(), 1);
}
