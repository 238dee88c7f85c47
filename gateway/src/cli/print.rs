//! The commands' answers as a person reads them: aligned columns.

use serde_json::Value;

/// Prints `rows` under `head`, each column as wide as its widest cell.
fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The items of a JSON array; none for anything else.
fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn pods(answer: &Value) {
    let rows: Vec<Vec<String>> = list(&answer["pods"])
        .iter()
        .map(|p| {
            let state = if p["draining"] == Value::Bool(true) {
                "draining"
            } else if p["ready"] == Value::Bool(true) {
                "ready"
            } else {
                "not ready"
            };
            vec![
                text(&p["id"]),
                text(&p["node"]),
                text(&p["address"]),
                text(&p["version"]),
                format!("{}s", text(&p["uptime_s"])),
                text(&p["connections"]["websocket"]),
                text(&p["connections"]["longpoll"]),
                text(&p["channels"]),
                text(&p["topics"]),
                state.into(),
            ]
        })
        .collect();
    table(
        &[
            "POD",
            "NODE",
            "ADDRESS",
            "VERSION",
            "UPTIME",
            "WEBSOCKET",
            "LONGPOLL",
            "CHANNELS",
            "TOPICS",
            "STATE",
        ],
        &rows,
    );
}

pub(super) fn topics(answer: &Value) {
    let rows: Vec<Vec<String>> = list(&answer["topics"])
        .iter()
        .map(|t| {
            let pods = t["pods"].as_object().map_or(0, serde_json::Map::len);
            vec![text(&t["topic"]), text(&t["subscribers"]), pods.to_string()]
        })
        .collect();
    table(&["TOPIC", "SUBSCRIBERS", "PODS"], &rows);
    if let Some(next) = answer["next"].as_str() {
        println!("(more: --after {next})");
    }
}

pub(super) fn topic(answer: &Value) {
    println!(
        "{}: {} subscriber(s)",
        text(&answer["topic"]),
        text(&answer["subscribers"])
    );
    if let Some(pods) = answer["pods"].as_object() {
        for (pod, n) in pods {
            println!("  pod {pod}: {n}");
        }
    }
    let rows: Vec<Vec<String>> = list(&answer["connections"])
        .iter()
        .map(|c| {
            vec![
                text(&c["conn"]),
                text(&c["transport"]),
                text(&c["user"]),
                text(&c["socket_id"]),
                text(&c["peer"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        table(
            &["CONNECTION", "TRANSPORT", "USER", "SOCKET ID", "PEER"],
            &rows,
        );
    }
    match answer["presence"].as_object() {
        Some(p) if !p.is_empty() => {
            println!("\npresence:");
            for (key, entry) in p {
                println!("  {key}: {}", entry["metas"]);
            }
        }
        _ => println!("\npresence: nobody"),
    }
    match &answer["history"] {
        Value::Null => println!("history: not kept"),
        h => {
            println!("history: top {}", text(&h["top"]));
            for m in h["messages"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                println!(
                    "  {} {} {}",
                    text(&m["position"]),
                    text(&m["event"]),
                    m["payload"]
                );
            }
        }
    }
}

pub(super) fn disconnected(answer: &Value) {
    match answer.get("removed") {
        Some(n) => println!("removed {}", text(n)),
        None => println!("disconnected {}", text(&answer["disconnected"])),
    }
}
