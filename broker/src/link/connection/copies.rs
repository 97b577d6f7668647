//! The router's further copies of a message already sent once: for a message matching
//! several plain subscriptions of a connection, rumqttd delivers one copy per filter,
//! each from that filter's log and in its own time; the first to arrive goes to the
//! client as the one copy (`Subscriptions::overlap`), and the others are recognised by
//! the message number in their origin header and dropped here.

use std::collections::{HashMap, VecDeque};

/// Messages whose copies are owed most are kept; past this, the oldest are forgotten
/// (a copy of one then goes out after all, which MQTT allows [MQTT-3.3.4-2]). A copy that
/// never comes (its filter was unsubscribed, or the router skipped it for a slow reader)
/// leaves its entry only this way.
const REMEMBERED: usize = 4096;

/// Message number → copies still to come.
#[derive(Debug, Default)]
pub(crate) struct LaterCopies {
    owed: HashMap<u64, usize>,
    /// Numbers in the order they were expected, settled ones included (dropped when they
    /// reach the front), so settling one costs nothing.
    order: VecDeque<u64>,
}

crate::link::lazy::idle!(LaterCopies, |c| c.owed.is_empty() && c.order.is_empty());

impl LaterCopies {
    /// `message` went out, and the router will deliver it `more` times again.
    pub(crate) fn expect(&mut self, message: u64, more: usize) {
        if more == 0 || self.owed.insert(message, more).is_some() {
            return;
        }
        if self.order.len() == REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.owed.remove(&oldest);
            }
        }
        self.order.push_back(message);
    }

    /// Whether this copy of `message` is one of those to drop.
    pub(crate) fn take(&mut self, message: u64) -> bool {
        let Some(left) = self.owed.get_mut(&message) else {
            return false;
        };
        *left -= 1;
        if *left == 0 {
            self.owed.remove(&message);
            if self.owed.is_empty() {
                self.order.clear();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_exactly_the_copies_owed() {
        let mut c = LaterCopies::default();
        assert!(!c.take(7));
        c.expect(7, 2);
        c.expect(8, 0);
        assert!(c.take(7));
        assert!(!c.take(8));
        assert!(c.take(7));
        assert!(!c.take(7), "all copies came");
        assert!(c.owed.is_empty() && c.order.is_empty(), "nothing kept");
    }

    #[test]
    fn forgets_the_oldest_past_its_bound() {
        let mut c = LaterCopies::default();
        for m in 0..REMEMBERED as u64 + 10 {
            c.expect(m, 1);
        }
        assert_eq!(c.owed.len(), REMEMBERED);
        assert!(!c.take(0), "forgotten");
        assert!(c.take(REMEMBERED as u64 + 9));
    }
}
