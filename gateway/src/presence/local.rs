//! The presence state of one topic as this pod keeps it in memory, so that a
//! join lists its topic without asking Redis.
//!
//! Built once from the store, then kept current from every pod's diffs (this
//! pod's own changes are applied at once, their echo from Redis is a no-op)
//! and corrected by periodic reconciles with the store. Metas are kept as the
//! JSON text they arrived as, so a `presence_state` is a concatenation, not a
//! serialization.
//!
//! What clients of this pod saw is the state at their `presence_state` plus
//! every diff dispatched since, so every change to `entries` after a client
//! could have seen the state goes into `pending`, which the actor dispatches
//! once per window. The encoded state is reused until that dispatch: a
//! joiner between two dispatches gets it and then the pending diff, which
//! holds every later change (phoenix.js applies a join or leave it already
//! has as a no-op).

use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One presence: its key, its meta as JSON text, and when this pod learned
/// of it (a sequence number, so a reconcile removes only what it could see).
#[derive(Debug, Clone)]
struct Slot {
    key: Arc<str>,
    meta: Arc<str>,
    seq: u64,
}

/// Joins and leaves by ref, in the order they happened.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    joins: IndexMap<Arc<str>, (Arc<str>, Arc<str>)>,
    leaves: IndexMap<Arc<str>, (Arc<str>, Arc<str>)>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload `{"joins": STATE, "leaves": STATE}`.
    pub(crate) fn payload(&self) -> Bytes {
        let mut out = Vec::with_capacity(64 + 96 * (self.joins.len() + self.leaves.len()));
        out.extend_from_slice(b"{\"joins\":");
        grouped(&mut out, self.joins.values());
        out.extend_from_slice(b",\"leaves\":");
        grouped(&mut out, self.leaves.values());
        out.push(b'}');
        Bytes::from(out)
    }
}

/// `{"key": {"metas": [meta, ...]}, ...}`, keys in first-seen order.
fn grouped<'a>(out: &mut Vec<u8>, metas: impl Iterator<Item = &'a (Arc<str>, Arc<str>)>) {
    let mut by_key: IndexMap<&str, Vec<&str>> = IndexMap::new();
    for (key, meta) in metas {
        by_key.entry(key).or_default().push(meta);
    }
    out.push(b'{');
    for (i, (key, metas)) in by_key.iter().enumerate() {
        key_prefix(out, i, key);
        for (j, m) in metas.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m.as_bytes());
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b'}');
}

/// `,"key":{"metas":[` (without the comma for the first key).
fn key_prefix(out: &mut Vec<u8>, i: usize, key: &str) {
    if i > 0 {
        out.push(b',');
    }
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.extend_from_slice(b":{\"metas\":[");
}

/// An entry as the store holds it: `{"key": ..., "meta": {...}}`.
#[derive(Deserialize)]
struct StoredWire<'a> {
    key: String,
    #[serde(borrow)]
    meta: &'a RawValue,
}

/// A `presence_diff` payload as pods publish it.
#[derive(Deserialize)]
struct DiffWire<'a> {
    #[serde(borrow, default)]
    joins: HashMap<String, MetasWire<'a>>,
    #[serde(borrow, default)]
    leaves: HashMap<String, MetasWire<'a>>,
}

#[derive(Deserialize)]
struct MetasWire<'a> {
    #[serde(borrow, default)]
    metas: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct RefOf {
    phx_ref: String,
}

/// One change of a decoded diff: (ref, key, meta).
pub(crate) type Change = (Arc<str>, Arc<str>, Arc<str>);

/// Decodes a `presence_diff` payload into its joins and its leaves.
///
/// # Errors
/// When the payload is not a diff (another publisher's mistake).
pub(crate) fn decode_diff(payload: &[u8]) -> Result<(Vec<Change>, Vec<Change>), serde_json::Error> {
    let wire: DiffWire = serde_json::from_slice(payload)?;
    let side = |m: HashMap<String, MetasWire>| -> Result<Vec<Change>, serde_json::Error> {
        let mut out = Vec::new();
        for (key, metas) in m {
            let key: Arc<str> = Arc::from(key);
            for meta in metas.metas {
                let r: RefOf = serde_json::from_str(meta.get())?;
                out.push((Arc::from(r.phx_ref), key.clone(), Arc::from(meta.get())));
            }
        }
        Ok(out)
    };
    Ok((side(wire.joins)?, side(wire.leaves)?))
}

/// Decodes a store listing `(ref, value)`; malformed values are skipped.
pub(crate) fn decode_listing(values: &[(String, Bytes)]) -> Vec<Change> {
    values
        .iter()
        .filter_map(|(r, v)| match serde_json::from_slice::<StoredWire>(v) {
            Ok(w) => Some((
                Arc::from(r.as_str()),
                Arc::from(w.key),
                Arc::from(w.meta.get()),
            )),
            Err(e) => {
                tracing::warn!(entry = r, error = %e, "skipping a malformed presence entry");
                None
            }
        })
        .collect()
}

/// The presence state of one topic on this pod.
#[derive(Debug, Default)]
pub(crate) struct TopicState {
    entries: HashMap<Arc<str>, Slot>,
    /// Refs by key, in first-seen order: the `presence_state` grouping.
    keys: IndexMap<Arc<str>, Vec<Arc<str>>>,
    /// Changes not yet dispatched to this pod's clients.
    pending: Changes,
    /// The encoded state, valid until `pending` is next dispatched.
    snapshot: Option<Bytes>,
    /// Refs that left, newer and older generation: a ref never comes back,
    /// so a late join (an echo overtaken by the leave, a listing read before
    /// the leave) must not resurrect it.
    gone: [HashSet<Arc<str>>; 2],
    /// Built from the store (until then only changes seen since creation).
    pub(crate) loaded: bool,
}

impl TopicState {
    /// Presences held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_gone(&self, r: &str) -> bool {
        self.gone[0].contains(r) || self.gone[1].contains(r)
    }

    /// Adds a presence; false if it is known already or left before. With
    /// `announce`, clients of this pod will receive it in the next diff.
    pub(crate) fn join(&mut self, (r, key, meta): Change, seq: u64, announce: bool) -> bool {
        if self.is_gone(&r) || self.entries.contains_key(&r) {
            return false;
        }
        self.keys.entry(key.clone()).or_default().push(r.clone());
        if announce {
            self.pending
                .joins
                .insert(r.clone(), (key.clone(), meta.clone()));
        }
        self.entries.insert(r, Slot { key, meta, seq });
        true
    }

    /// Removes a presence for good (a leave).
    pub(crate) fn leave(&mut self, r: &Arc<str>) -> bool {
        self.gone[0].insert(r.clone());
        self.remove(r, true)
    }

    /// Removes a presence without remembering it left: a reconcile found it
    /// missing in the store, where a write still to come may put it back.
    fn remove(&mut self, r: &str, announce: bool) -> bool {
        let Some((r, slot)) = self.entries.remove_entry(r) else {
            return false;
        };
        if let Some(refs) = self.keys.get_mut(&slot.key) {
            refs.retain(|x| *x != r);
            if refs.is_empty() {
                self.keys.swap_remove(&slot.key);
            }
        }
        if announce {
            // A leave cancels a pending join but is still sent: a client may
            // have the join from a presence_state meanwhile.
            self.pending.joins.shift_remove(&r);
            self.pending.leaves.insert(r, (slot.key, slot.meta));
        }
        true
    }

    /// Makes this state agree with a listing of the store requested when
    /// the sequence was at `since`: adds what is missing (unless it left),
    /// removes what the store no longer holds if it was known before the
    /// request (anything newer may have been written after the listing).
    /// Returns (added, removed).
    pub(crate) fn merge(
        &mut self,
        listing: Vec<Change>,
        since: u64,
        seq: u64,
        announce: bool,
    ) -> (usize, usize) {
        let listed: HashSet<Arc<str>> = listing.iter().map(|c| c.0.clone()).collect();
        let stale: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(r, s)| s.seq <= since && !listed.contains(*r))
            .map(|(r, _)| r.clone())
            .collect();
        for r in &stale {
            self.remove(r, announce);
        }
        let mut added = 0;
        for c in listing {
            added += usize::from(self.join(c, seq, announce));
        }
        if added + stale.len() > 0 {
            self.snapshot = None;
        }
        (added, stale.len())
    }

    /// The `presence_state` payload, encoded at most once per dispatch.
    pub(crate) fn state(&mut self) -> Bytes {
        if let Some(s) = &self.snapshot {
            return s.clone();
        }
        let s = self.encode();
        self.snapshot = Some(s.clone());
        s
    }

    /// The state as it is now, pending changes included.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(2 + self.entries.len() * 96);
        out.push(b'{');
        for (i, (key, refs)) in self.keys.iter().enumerate() {
            key_prefix(&mut out, i, key);
            let mut first = true;
            for r in refs {
                if let Some(slot) = self.entries.get(r) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(slot.meta.as_bytes());
                }
            }
            out.extend_from_slice(b"]}");
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// The pending diff's payload, if any; from now on the state must be
    /// encoded afresh.
    pub(crate) fn take_pending(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        self.snapshot = None;
        let payload = self.pending.payload();
        self.pending = Changes::default();
        Some(payload)
    }

    /// Forgets refs that left two rotations ago.
    pub(crate) fn rotate(&mut self) {
        let newer = std::mem::take(&mut self.gone[0]);
        self.gone[1] = newer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn c(r: &str, key: &str) -> Change {
        let meta = json!({"phx_ref": r, "online_at": "1"}).to_string();
        (Arc::from(r), Arc::from(key), Arc::from(meta.as_str()))
    }

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn state_groups_metas_by_key_and_is_reused_until_dispatch() {
        let mut t = TopicState::default();
        t.join(c("1", "a"), 1, true);
        t.join(c("2", "b"), 2, true);
        t.join(c("3", "a"), 3, true);
        let s = t.state();
        assert_eq!(
            parse(&s),
            json!({
                "a": {"metas": [{"phx_ref": "1", "online_at": "1"}, {"phx_ref": "3", "online_at": "1"}]},
                "b": {"metas": [{"phx_ref": "2", "online_at": "1"}]},
            })
        );
        t.join(c("4", "c"), 4, true);
        assert_eq!(t.state(), s, "the pending diff carries the rest");
        assert!(parse(&t.encode())["c"].is_object());
        let diff = parse(&t.take_pending().unwrap());
        assert_eq!(diff["joins"].as_object().unwrap().len(), 3);
        assert!(parse(&t.state())["c"].is_object());
    }

    #[test]
    fn leaves_win_over_late_joins_and_cancel_pending_joins() {
        let mut t = TopicState::default();
        t.join(c("1", "a"), 1, true);
        assert!(t.leave(&Arc::from("1")));
        assert!(!t.join(c("1", "a"), 2, true), "a late echo");
        let diff = parse(&t.take_pending().unwrap());
        assert_eq!(diff["joins"], json!({}));
        assert_eq!(diff["leaves"]["a"]["metas"][0]["phx_ref"], "1");
        assert_eq!(t.len(), 0);
        t.rotate();
        t.rotate();
        assert!(
            t.join(c("1", "a"), 3, true),
            "forgotten after two rotations"
        );
    }

    #[test]
    fn merge_adds_missing_and_removes_only_what_the_listing_could_see() {
        let mut t = TopicState::default();
        t.join(c("old", "a"), 1, false);
        t.join(c("new", "b"), 5, false);
        t.leave(&Arc::from("left"));
        let listing = vec![c("x", "c"), c("left", "d")];
        assert_eq!(t.merge(listing, 3, 6, true), (1, 1));
        let state = parse(&t.encode());
        assert!(state.get("a").is_none(), "{state}");
        assert!(state["b"].is_object() && state["c"].is_object());
        assert!(state.get("d").is_none(), "left before: not resurrected");
        let diff = parse(&t.take_pending().unwrap());
        assert_eq!(diff["leaves"]["a"]["metas"][0]["phx_ref"], "old");
        assert_eq!(diff["joins"]["c"]["metas"][0]["phx_ref"], "x");
    }

    #[test]
    fn diffs_and_listings_decode() {
        let diff = json!({"joins": {"a": {"metas": [{"phx_ref": "1"}, {"phx_ref": "2"}]}},
                          "leaves": {"b\"q": {"metas": [{"phx_ref": "3", "x": [1]}]}}});
        let (joins, leaves) = decode_diff(diff.to_string().as_bytes()).unwrap();
        assert_eq!(joins.len(), 2);
        assert_eq!(&*leaves[0].1, "b\"q");
        assert_eq!(&*leaves[0].2, r#"{"phx_ref":"3","x":[1]}"#);
        assert!(decode_diff(b"{\"joins\":{\"a\":{\"metas\":[{}]}}}").is_err());
        let listing = vec![
            (
                "r1".to_owned(),
                Bytes::from(json!({"key": "k", "meta": {"phx_ref": "r1"}}).to_string()),
            ),
            ("bad".to_owned(), Bytes::from_static(b"nope")),
        ];
        let decoded = decode_listing(&listing);
        assert_eq!(decoded.len(), 1);
        assert_eq!((&*decoded[0].0, &*decoded[0].1), ("r1", "k"));
    }
}
