//! A long-poll session token signed with another pod's secret, against real
//! `gateway` processes: the pod answers 410 without a token (the session is
//! unknown to it), on which phoenix.js drops the token and opens a new
//! session, as docs/longpoll.md says; a JWT in the same `token` param is
//! still a connect param, not mistaken for a session token.

use serde_json::json;
use test_support::http::Request;
use test_support::jwt::token;
use test_support::{GatewayProcess, LpClient};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

#[tokio::test]
async fn a_token_of_another_secret_is_410_and_the_client_recovers() {
    // No Redis: each pod's long-poll secret is random, so they differ.
    let a = GatewayProcess::builder(BIN).start().await;
    let b = GatewayProcess::builder(BIN).start().await;
    let mut lp = LpClient::new(a.addr, "vsn=2.0.0");
    lp.open().await;
    let foreign = lp.target();

    let got = Request::get(&foreign).send(b.addr).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        got.json(),
        json!({"status": 410, "token": null, "messages": []})
    );
    let posted = Request::post(&foreign)
        .header("Content-Type", "application/x-ndjson")
        .body(json!(["1", "1", "room:x", "phx_join", {}]).to_string())
        .send(b.addr)
        .await;
    assert_eq!(posted.json(), json!({"status": 410}));

    // What phoenix.js does next: forget the token, open a session on b.
    lp.addr = b.addr;
    lp.token = None;
    lp.open().await;
    lp.call(
        &[json!(["1", "1", "room:x", "phx_join", {}])],
        &[json!(["1", "1", "room:x", "phx_reply", {"status": "ok", "response": {}}])],
    )
    .await;
}

#[tokio::test]
async fn a_jwt_in_the_token_param_still_connects() {
    let pod = GatewayProcess::builder(BIN)
        .configure(|c| c.sockets[0].require_token = true)
        .start()
        .await;
    let mut lp = LpClient::new(pod.addr, &format!("vsn=2.0.0&token={}", token("u1")));
    lp.open().await;
    let forged = LpClient::new(pod.addr, "vsn=2.0.0&token=not-a-session-token");
    let refused = Request::get(&forged.target()).send(pod.addr).await;
    assert_eq!(refused.json(), json!({"status": 403}));
}
