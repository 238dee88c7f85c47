//! The opening handshake, RFC 6455 §4.2.1.

use crate::case::*;
use test_support::raw_ws::{RawWs, KEY};

/// The opening handshake (§4.2.1): anything but a GET over HTTP/1.1 with
/// `Host`, `Upgrade`, `Connection`, version 13 and a key that is the base64
/// of 16 bytes is refused before any WebSocket frame, 426 naming version 13
/// for another version.
#[tokio::test]
async fn handshake_4_2_1() {
    let mut pod = Pod::start().await;
    let addr = pod.gw.addr;
    let request = |line: &str, headers: &[(&str, &str)]| {
        let mut r = format!("{line}\r\n");
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        (r + "\r\n").into_bytes()
    };
    let get = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1";
    let host = format!("{addr}");
    let good = |skip: &str, extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = vec![
            ("Host", &host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", KEY),
        ];
        h.retain(|(k, _)| *k != skip);
        h.extend_from_slice(extra);
        request(get, &h)
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
    let r = RawWs::handshake_answer(addr, &good("", &[])).await;
    assert_eq!(
        (r.status, r.header("sec-websocket-accept")),
        (101, Some(accept.as_str()))
    );
    let browser = [
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "WebSocket"),
    ];
    let r = RawWs::handshake_answer(addr, &good("Connection", &browser)).await;
    assert_eq!(r.status, 101, "Firefox's headers: {r:?}");

    let old = good("", &[]);
    let old = String::from_utf8(old)
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP/1.0", old.into_bytes()),
        ("no Host", good("Host", &[])),
        ("no key", good("Sec-WebSocket-Key", &[])),
        (
            "key not base64",
            good("Sec-WebSocket-Key", &[("Sec-WebSocket-Key", "not base64!")]),
        ),
        (
            "key of 15 bytes",
            good(
                "Sec-WebSocket-Key",
                &[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j")],
            ),
        ),
        (
            "key of 17 bytes",
            good(
                "Sec-WebSocket-Key",
                &[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZTE=")],
            ),
        ),
        (
            "two keys",
            good("", &[("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")]),
        ),
        ("no version", good("Sec-WebSocket-Version", &[])),
        ("no Upgrade", good("Upgrade", &[])),
        (
            "POST",
            String::from_utf8(good("", &[]))
                .unwrap()
                .replacen("GET", "POST", 1)
                .into_bytes(),
        ),
    ];
    for (what, req) in refused {
        let r = RawWs::handshake_answer(addr, &req).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
    }
    for version in ["8", "12", "14"] {
        let v = [("Sec-WebSocket-Version", version)];
        let r = RawWs::handshake_answer(addr, &good("Sec-WebSocket-Version", &v)).await;
        assert_eq!(
            (r.status, r.header("sec-websocket-version")),
            (426, Some("13")),
            "{version}"
        );
    }
    pod.run(vec![]).await;
}
