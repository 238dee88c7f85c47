//! The WebSocket connections a pod may close to hand its clients to other
//! pods (rebalancing), oldest first: a client that just arrived, perhaps
//! after being shed elsewhere, is the last to be shed again.
//!
//! Kept only when rebalancing is on; otherwise connections register nothing
//! and pay nothing.

use crate::conn::{ConnHandle, Disconnect};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Open WebSocket connections by id (ids grow with age, so the first is the
/// oldest). Long-poll sessions are not here: they are never shed.
#[derive(Debug, Default)]
pub(crate) struct Sheddable {
    open: Mutex<BTreeMap<u64, ConnHandle>>,
}

/// A connection's place in [`Sheddable`], given up when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    of: Arc<Sheddable>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.of.open.lock().remove(&self.id);
    }
}

impl Sheddable {
    /// Adds `conn`, for as long as the returned guard lives.
    pub(crate) fn register(self: &Arc<Self>, conn: &ConnHandle) -> Registered {
        self.open.lock().insert(conn.id(), conn.clone());
        Registered {
            of: self.clone(),
            id: conn.id(),
        }
    }

    /// Closes the oldest connection still open with [`Disconnect::Rebalance`]
    /// (its client reconnects through the balancer); false when none is left.
    pub(crate) fn shed_oldest(&self) -> bool {
        loop {
            // Taken out, so a connection whose task has not ended yet is
            // not picked twice.
            let Some((_, conn)) = self.open.lock().pop_first() else {
                return false;
            };
            if conn.is_closed() {
                continue;
            }
            conn.close(Disconnect::Rebalance);
            return true;
        }
    }

    /// Connections that may be shed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Budget;
    use crate::protocol::Vsn;

    fn conn() -> ConnHandle {
        ConnHandle::new(
            Vsn::V2,
            Budget {
                frames: 8,
                bytes: 1024,
            },
        )
    }

    #[test]
    fn sheds_oldest_first_skipping_closed_and_forgets_dropped() {
        let s = Arc::new(Sheddable::default());
        let (a, b, c) = (conn(), conn(), conn());
        let _ra = s.register(&a);
        let rb = s.register(&b);
        let _rc = s.register(&c);
        assert_eq!(s.len(), 3);
        drop(rb);
        assert_eq!(s.len(), 2);
        a.close(Disconnect::ClientClosed(None));
        assert!(s.shed_oldest());
        assert_eq!(c.reason(), Some(Disconnect::Rebalance));
        assert!(!s.shed_oldest());
        assert_eq!(s.len(), 0);
    }
}
