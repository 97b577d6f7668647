//! Callers of `wait_terminal` waiting for their command to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::CommandView;

/// Callers waiting for commands to reach a terminal status, by command id. Each
/// terminal record wakes only its own waiters (a broadcast to every waiter would cost
/// O(waiters) wake-ups per command under load).
#[derive(Default)]
pub(super) struct Waiters {
    by_id: Mutex<HashMap<String, Vec<oneshot::Sender<Arc<CommandView>>>>>,
}

impl Waiters {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Arc<CommandView>>>>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in `command_id`; the receiver gets the terminal record.
    pub(super) fn register(&self, command_id: &str) -> oneshot::Receiver<Arc<CommandView>> {
        let (tx, rx) = oneshot::channel();
        self.map()
            .entry(command_id.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Drops registrations whose receivers are gone (a waiter that timed out).
    pub(super) fn prune(&self, command_id: &str) {
        let mut map = self.map();
        if let Some(list) = map.get_mut(command_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(command_id);
            }
        }
    }

    /// Hands `view` to everyone waiting for its command.
    pub(super) fn wake(&self, view: Arc<CommandView>) {
        let Some(list) = self.map().remove(&view.command_id) else {
            return;
        };
        for tx in list {
            let _ = tx.send(view.clone());
        }
    }
}
