//! [`Lazy`]: connection state that takes no room until it is used, and gives it back
//! once it is empty again. Most of a fleet's connections are idle, and an idle
//! connection's QoS 2 exchanges, aliases, held acks and the like are all empty; each
//! empty map or queue is still 24-160 bytes inline, so together they were kilobytes per
//! device (docs/architecture.md, "What a device costs").

use std::ops::{Deref, DerefMut};

/// State that is empty while the connection is idle.
pub(crate) trait Idle: Default + Send + Sync + 'static {
    /// One shared empty value, read while nothing is allocated.
    fn empty() -> &'static Self;
    /// Whether the value holds nothing a fresh default would not.
    fn is_idle(&self) -> bool;
}

/// A `T` behind a box made on the first mutable use. Reads of an unmade one see
/// [`Idle::empty`]; [`Lazy::settle`] drops the box once the value is idle again.
#[derive(Debug, Default)]
pub(crate) struct Lazy<T>(Option<Box<T>>);

impl<T: Idle> Lazy<T> {
    /// The value, leaving nothing allocated.
    pub(crate) fn take_value(&mut self) -> T {
        self.0.take().map(|value| *value).unwrap_or_default()
    }

    /// Frees the value if it holds nothing.
    pub(crate) fn settle(&mut self) {
        if self.0.as_deref().is_some_and(T::is_idle) {
            self.0 = None;
        }
    }
}

impl<T: Idle> Deref for Lazy<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(value) => value,
            None => T::empty(),
        }
    }
}

impl<T: Idle> DerefMut for Lazy<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

/// Frees an empty vector's room (draining one keeps it: a device that once sent a
/// response would keep room for four packets, 1.6 KB, for good).
pub(crate) fn release<T>(v: &mut Vec<T>) {
    if v.is_empty() && v.capacity() > 0 {
        *v = Vec::new();
    }
}

/// [`release`] for a queue.
pub(crate) fn release_deque<T>(v: &mut std::collections::VecDeque<T>) {
    if v.is_empty() && v.capacity() > 0 {
        *v = std::collections::VecDeque::new();
    }
}

/// Implements [`Idle`] for types whose `Default` is their idle state, with the test of
/// idleness given as a closure.
macro_rules! idle {
    ($t:ty, $is_idle:expr) => {
        impl $crate::link::lazy::Idle for $t {
            fn empty() -> &'static Self {
                static EMPTY: std::sync::OnceLock<$t> = std::sync::OnceLock::new();
                EMPTY.get_or_init(<$t>::default)
            }
            fn is_idle(&self) -> bool {
                let is_idle: fn(&$t) -> bool = $is_idle;
                is_idle(self)
            }
        }
    };
}
pub(crate) use idle;

idle!(std::collections::HashMap<u16, String>, |m| m.is_empty());
idle!(std::collections::HashSet<u16>, |m| m.is_empty());
idle!(std::collections::HashMap<String, u16>, |m| m.is_empty());
idle!(std::collections::HashMap<String, u8>, |m| m.is_empty());
idle!(std::collections::HashMap<String, u64>, |m| m.is_empty());

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reads_allocate_nothing_and_settle_frees_an_emptied_value() {
        let mut set: Lazy<HashSet<u16>> = Lazy::default();
        assert!(!set.contains(&1));
        assert!(set.0.is_none(), "a read made no box");
        set.insert(1);
        set.settle();
        assert!(set.contains(&1), "a value that holds something stays");
        set.remove(&1);
        set.settle();
        assert!(set.0.is_none(), "an emptied value is freed");
    }
}
