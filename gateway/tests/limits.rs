//! Per-pod limits of a real `gateway` process: at `max_connections` new
//! WebSocket and long-poll connections are refused with 503 and `/readyz`
//! fails (its body says why and reports Redis); below it again, both recover.
//!
//! Needs `redis-server` on PATH.

mod support;

use futures_util::StreamExt as _;
use std::time::{Duration, Instant};
use support::redis::{Pod, RedisServer};
use tokio_tungstenite::tungstenite::Error as WsError;

const MAX: usize = 5;

#[tokio::test]
async fn at_the_connection_limit_new_connections_are_refused_and_readyz_fails() {
    let redis = RedisServer::start().await;
    let server = format!("max_connections = {MAX}\n");
    let pod = Pod::start_with_server(&server, &redis.url(), "limits:").await;
    let (status, body) = pod.get("/readyz").await.expect("readyz answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("redis: connected"), "{body}");

    let mut clients = Vec::new();
    for _ in 0..MAX {
        let (ws, _) = tokio_tungstenite::connect_async(pod.url(""))
            .await
            .expect("below the limit");
        clients.push(ws);
    }
    let (status, body) = pod.get("/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with(&format!("at connection limit ({MAX} of {MAX})")),
        "{body}"
    );

    match tokio_tungstenite::connect_async(pod.url("")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("expected a 503 refusal, got {:?}", other.map(|_| ())),
    }
    let (status, _) = pod
        .get("/socket/longpoll?vsn=2.0.0")
        .await
        .expect("long-poll answers");
    assert_eq!(status, 503, "a long-poll session opened past the limit");

    // One client leaves: ready again, and a new connection is accepted.
    let mut gone = clients.pop().expect("a client");
    gone.close(None).await.expect("close");
    while gone.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if pod.get("/readyz").await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio_tungstenite::connect_async(pod.url(""))
        .await
        .expect("accepted again below the limit");
}
