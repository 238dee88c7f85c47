//! What a long-poll session holds against the pod's limits: its place in
//! its source's count, and its place in the pod's count of unpolled
//! sessions until its first GET, then in `max_connections`. A session that
//! never polls is not a user: it neither fills the pod's connection slots
//! nor makes it unready, and it ends after `unpolled_timeout`.

use crate::transport::admission::{Slot, Slots};
use crate::transport::source::SourcePermit;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub(crate) struct Ticket {
    _source: SourcePermit,
    /// In the unpolled gauge until the first poll, then in `connections`.
    counted: Mutex<Slot>,
    connections: Slots,
    polled: AtomicBool,
}

impl Ticket {
    pub(crate) fn new(source: SourcePermit, unpolled: &Slots, connections: Slots) -> Self {
        Ticket {
            _source: source,
            counted: Mutex::new(unpolled.hold()),
            connections,
            polled: AtomicBool::new(false),
        }
    }

    /// The session polled: from now on it counts as a connection.
    pub(crate) fn polled(&self) {
        if !self.polled.swap(true, Ordering::Relaxed) {
            *self.counted.lock() = self.connections.hold();
        }
    }

    pub(crate) fn has_polled(&self) -> bool {
        self.polled.load(Ordering::Relaxed)
    }

    /// A ticket of its own, for unit tests of a session.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        let sources = crate::transport::source::Sources::new(Default::default());
        let permit = sources.admit(std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
        Ticket::new(permit, &Slots::default(), Slots::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_counts_as_a_connection_from_its_first_poll() {
        let sources = crate::transport::source::Sources::new(Default::default());
        let (unpolled, connections) = (Slots::default(), Slots::default());
        let permit = sources.admit([192, 0, 2, 1].into()).unwrap();
        let t = Ticket::new(permit, &unpolled, connections.clone());
        assert_eq!((unpolled.open(), connections.open()), (1, 0));
        t.polled();
        t.polled();
        assert_eq!((unpolled.open(), connections.open()), (0, 1));
        drop(t);
        assert_eq!((unpolled.open(), connections.open()), (0, 0));
    }
}
