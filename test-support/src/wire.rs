//! Tests written once for both serializers: `Wire` drives a [`PhxClient`]
//! with V2 arrays and, on V1, turns them into V1 objects both ways
//! (phoenix's websocket_channels_test runs every case on both).

use crate::phoenix::{reply, PhxClient, Received};
use crate::server::TestServer;
use gateway::protocol::Vsn;
use serde_json::{json, Value};

/// The V1 object a client sends for the V2 array `frame`.
pub fn v1_in(frame: &Value) -> Value {
    json!({
        "join_ref": frame[0], "ref": frame[1], "topic": frame[2],
        "event": frame[3], "payload": frame[4],
    })
}

/// The V1 object the server sends for the V2 array `frame`: no join_ref.
pub fn v1_out(frame: &Value) -> Value {
    json!({"ref": frame[1], "topic": frame[2], "event": frame[3], "payload": frame[4]})
}

/// A client on either serializer, driven with V2 arrays.
#[derive(Debug)]
pub struct Wire {
    pub client: PhxClient,
    pub vsn: Vsn,
}

impl Wire {
    pub async fn connect(server: &TestServer, vsn: Vsn) -> Wire {
        let client = PhxClient::connect(&server.url(&format!("vsn={}", vsn.as_str()))).await;
        Wire { client, vsn }
    }

    /// Connects and joins `room:lobby` with join_ref and ref `"1"`.
    pub async fn joined(server: &TestServer, vsn: Vsn) -> Wire {
        let mut w = Wire::connect(server, vsn).await;
        w.send(json!(["1", "1", "room:lobby", "phx_join", {}]))
            .await;
        w.expect(reply(Some("1"), "1", "room:lobby", "ok", json!({})))
            .await;
        w
    }

    /// The frame as this client's serializer writes `frame` (client → server).
    pub fn outgoing(&self, frame: &Value) -> Value {
        match self.vsn {
            Vsn::V1 => v1_in(frame),
            Vsn::V2 => frame.clone(),
        }
    }

    /// The frame as the server must write `frame` for this client.
    pub fn incoming(&self, frame: &Value) -> Value {
        match self.vsn {
            Vsn::V1 => v1_out(frame),
            Vsn::V2 => frame.clone(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        let out = self.outgoing(&frame);
        self.client.send(out).await;
    }

    /// Asserts the next frame is `frame` (written as V2).
    pub async fn expect(&mut self, frame: Value) {
        let want = self.incoming(&frame);
        match self.client.next().await {
            Received::Text(got) => assert_eq!(got, want, "serializer {:?}", self.vsn),
            other => panic!("serializer {:?}: expected {want}, got {other:?}", self.vsn),
        }
    }

    /// Pings `topic` with `jr` and `r`, asserting the `pong` reply is the very
    /// next frame: nothing was sent before it.
    pub async fn ping_next(&mut self, topic: &str, jr: &str, r: &str) {
        self.send(json!([jr, r, topic, "ping", {"r": r}])).await;
        self.expect(reply(Some(jr), r, topic, "ok", json!({"pong": {"r": r}})))
            .await;
    }

    /// Sends a heartbeat and asserts its reply is the very next frame.
    pub async fn heartbeat_next(&mut self, r: &str) {
        self.send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        self.expect(reply(None, r, "phoenix", "ok", json!({})))
            .await;
    }
}
