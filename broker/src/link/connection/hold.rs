//! The link layer's side of `testing::RouterHold` (compiled only with the `testing`
//! feature): a test arms a hold for a client id, and that client's connection keeps
//! what it hands the router in its link's buffer from the first SUBSCRIBE on, until the
//! test releases it (`Control::RouterRelease`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rumqttd::protocol::Packet;

/// One armed hold.
#[derive(Default)]
pub(crate) struct HoldState {
    /// Whether a SUBSCRIBE has been withheld (from then on, everything is).
    pub(crate) holding: AtomicBool,
    pub(crate) held: tokio::sync::Notify,
}

/// Arms a hold for `client_id`; panics if one is armed already.
pub(crate) fn arm(client_id: &str) -> Arc<HoldState> {
    let state = Arc::new(HoldState::default());
    let previous = holds().insert(client_id.to_owned(), state.clone());
    assert!(previous.is_none(), "{client_id} is held already");
    ARMED.fetch_add(1, Ordering::SeqCst);
    state
}

/// How many holds are armed: the link layer looks no further while there are none.
static ARMED: AtomicUsize = AtomicUsize::new(0);

fn holds() -> std::sync::MutexGuard<'static, HashMap<String, Arc<HoldState>>> {
    static HOLDS: OnceLock<Mutex<HashMap<String, Arc<HoldState>>>> = OnceLock::new();
    HOLDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn disarm(client_id: &str) {
    if holds().remove(client_id).is_some() {
        ARMED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the link of `client_id` keeps `packets` from the router for now.
pub(crate) fn withheld(client_id: &str, packets: &[Packet]) -> bool {
    if ARMED.load(Ordering::SeqCst) == 0 {
        return false;
    }
    let Some(state) = holds().get(client_id).cloned() else {
        return false;
    };
    if state.holding.load(Ordering::SeqCst) {
        return true;
    }
    if !packets.iter().any(|p| matches!(p, Packet::Subscribe(..))) {
        return false;
    }
    state.holding.store(true, Ordering::SeqCst);
    state.held.notify_one();
    true
}
