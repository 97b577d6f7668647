//! Command history's bound (`commands.history_days`): finished commands older than the
//! cutoff leave from the old end of each device's history, in steps the worker applies
//! like any other change, so the worker stays the single writer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::worker::Op;
use super::{duration_ms, CommandEngine, CommandError};

impl CommandEngine {
    /// Deletes the finished commands older than `commands.history_days`, from the old
    /// end of each device's history, in steps that each share a batch with other calls;
    /// returns how many. Nothing when history is kept forever.
    pub async fn prune_now(&self) -> Result<u64, CommandError> {
        let Some(history) = self.shared.config.history else {
            return Ok(0);
        };
        let cutoff_ms = self
            .shared
            .clock
            .now_ms()
            .saturating_sub(duration_ms(history));
        let mut removed = 0u64;
        let mut after = None;
        loop {
            let step = self
                .call(|reply| Op::Prune {
                    cutoff_ms,
                    after: after.take(),
                    reply,
                })
                .await??;
            removed += step.removed as u64;
            self.shared
                .counters
                .pruned
                .fetch_add(step.removed as u64, Ordering::Relaxed);
            match step.next {
                Some(next) => after = Some(next),
                None => return Ok(removed),
            }
        }
    }

    /// Prunes history at start and every `prune_every` until `shutdown`.
    pub(super) async fn run_pruner(self, shutdown: CancellationToken) {
        if self.shared.config.history.is_none() {
            return;
        }
        let every = self.shared.config.prune_every.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.prune_now().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "pruned finished commands from history"),
                Err(CommandError::ShuttingDown) => return,
                Err(error) => tracing::error!(%error, "pruning command history failed"),
            }
        }
    }
}
