//! Reading a pod's `GET /metrics`: one sample summed over the label sets
//! that match, a scrape, and waiting for a value.

use crate::http::Request;
use crate::wait::{self, SETTLE};
use std::net::SocketAddr;

/// The sum of the samples of `name` whose labels include all of `labels`;
/// `None` when no sample matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            let v: f64 = value.parse().unwrap();
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

/// `GET /metrics` at `addr`, which must answer 200.
pub async fn scrape_at(addr: SocketAddr) -> String {
    let r = Request::get("/metrics").send(addr).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Scrapes until `name{labels}` equals `want`, failing after [`SETTLE`];
/// returns that scrape.
pub async fn wait_for(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let what = format!("{name}{labels:?} = {want}");
    wait::until(&what, SETTLE, || async {
        let text = scrape_at(addr).await;
        match sample(&text, name, labels) {
            Some(got) if got == want => Ok(text),
            got => Err(format!("{got:?} in\n{text}")),
        }
    })
    .await
}
