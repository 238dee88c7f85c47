//! Phoenix's presence shapes, and diffs pending publication.
//!
//! `presence_state` is `{"key": {"metas": [meta, ...]}}`; `presence_diff` is
//! `{"joins": STATE, "leaves": STATE}`. Every meta carries its `phx_ref`
//! (unique per track) and, after an update, `phx_ref_prev`. phoenix.js
//! (`Presence.syncDiff`) applies joins before leaves and matches metas by
//! `phx_ref` only, so a diff may carry a leave of a ref the client never saw.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One tracked presence as stored: its key and its meta (with `phx_ref`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) meta: Map<String, Value>,
}

impl Entry {
    pub(crate) fn phx_ref(&self) -> &str {
        self.meta
            .get("phx_ref")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Groups metas by key in first-seen order: the `presence_state` shape.
pub(crate) fn state<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for e in entries {
        let slot = out
            .entry(e.key.clone())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(Value::Object(e.meta.clone()));
        }
    }
    out
}

/// Joins and leaves of one topic collected over a batch window, by ref, in
/// the order they happened (O(1) per change).
#[derive(Debug, Default)]
pub(crate) struct Diff {
    joins: IndexMap<String, Entry>,
    leaves: IndexMap<String, Entry>,
}

impl Diff {
    pub(crate) fn join(&mut self, entry: Entry) {
        self.joins.insert(entry.phx_ref().to_owned(), entry);
    }

    /// A leave cancels a pending join of the same ref, but is still sent:
    /// a client may have seen that join in a `presence_state` meanwhile.
    pub(crate) fn leave(&mut self, entry: Entry) {
        let r = entry.phx_ref().to_owned();
        self.joins.shift_remove(&r);
        self.leaves.insert(r, entry);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Merges a diff that could not be published back in front of this one.
    pub(crate) fn prepend(&mut self, mut older: Diff) {
        for r in self.leaves.keys() {
            older.joins.shift_remove(r);
        }
        older.joins.extend(self.joins.drain(..));
        older.leaves.extend(self.leaves.drain(..));
        *self = older;
    }

    /// The `presence_diff` payload.
    pub(crate) fn payload(&self) -> Value {
        serde_json::json!({
            "joins": state(self.joins.values()),
            "leaves": state(self.leaves.values()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, r: &str) -> Entry {
        let Value::Object(meta) = json!({"phx_ref": r, "online_at": "1"}) else {
            unreachable!()
        };
        Entry {
            key: key.into(),
            meta,
        }
    }

    #[test]
    fn state_groups_metas_by_key() {
        let s = state(&[entry("a", "1"), entry("b", "2"), entry("a", "3")]);
        assert_eq!(
            Value::Object(s),
            json!({
                "a": {"metas": [{"phx_ref": "1", "online_at": "1"}, {"phx_ref": "3", "online_at": "1"}]},
                "b": {"metas": [{"phx_ref": "2", "online_at": "1"}]},
            })
        );
    }

    #[test]
    fn leave_cancels_pending_join_but_is_sent() {
        let mut d = Diff::default();
        d.join(entry("a", "1"));
        d.join(entry("b", "2"));
        d.leave(entry("a", "1"));
        assert_eq!(
            d.payload(),
            json!({
                "joins": {"b": {"metas": [{"phx_ref": "2", "online_at": "1"}]}},
                "leaves": {"a": {"metas": [{"phx_ref": "1", "online_at": "1"}]}},
            })
        );
    }

    #[test]
    fn prepend_keeps_order_and_cancels() {
        let mut older = Diff::default();
        older.join(entry("a", "1"));
        let mut newer = Diff::default();
        newer.leave(entry("a", "1"));
        newer.join(entry("c", "3"));
        newer.prepend(older);
        assert_eq!(
            newer.payload()["joins"],
            json!({"c": {"metas": [{"phx_ref": "3", "online_at": "1"}]}})
        );
        assert_eq!(newer.leaves.len(), 1);
    }
}
