//! A device's answer inside the transaction: matched to an open command by the device's
//! plugin (by id, else the oldest sent command it allows), or recorded as a late answer
//! of a finished command, or counted as unknown.

use std::sync::atomic::Ordering;

use fleetmq_device_plugins::{CommandResponse, DevicePlugin, PendingCommand};
use fleetmq_storage::commands::{CommandRecord, CommandStatus, CommandWriter};
use fleetmq_storage::{DeviceId, StoreError};
use serde::Serialize;
use serde_json::Value;

use super::{moved, soft, Core, Effects};

/// `{"success":..,"result":..,"error":..,"received_at":..}`: a late answer as stored.
#[derive(Serialize)]
struct LateResponse<'a> {
    success: bool,
    result: Option<&'a Value>,
    error: Option<&'a str>,
    received_at: Option<String>,
}

impl Core {
    pub(super) fn response(
        &mut self,
        w: &mut CommandWriter<'_>,
        device: &DeviceId,
        resp: &CommandResponse,
        plugin: &dyn DevicePlugin,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        // A response with an id may answer any open command (even one still recorded as
        // queued after a crash); one without an id only a command that was sent.
        let open: Vec<CommandRecord> = w
            .open_for_device(device)?
            .into_iter()
            .filter(|r| resp.command_id.is_some() || r.status() != CommandStatus::Queued)
            .collect();
        let pending: Vec<PendingCommand<'_>> = open
            .iter()
            .map(|r| PendingCommand {
                command_id: &r.command_id,
                kind: &r.kind,
                created_at_ms: r.created_at_ms,
            })
            .collect();
        let matched = plugin
            .match_response(resp, &pending)
            .and_then(|i| open.get(i).cloned());
        if let Some(mut rec) = matched {
            let result = resp.result.as_ref().map(Value::to_string);
            let done = if resp.success {
                rec.complete(now, result)
            } else {
                let error = resp.error.clone();
                rec.fail(
                    now,
                    error.unwrap_or_else(|| "device reported failure".into()),
                    result,
                )
            };
            if moved(done) {
                w.put(&rec)?;
                fx.terminal.push(rec);
            }
            return Ok(());
        }
        self.unmatched(w, device, resp, now)
    }

    /// A response that answers no open command: late if it names a terminal command of
    /// this device, unknown otherwise.
    fn unmatched(
        &mut self,
        w: &mut CommandWriter<'_>,
        device: &DeviceId,
        resp: &CommandResponse,
        now: u64,
    ) -> Result<(), StoreError> {
        let known = match &resp.command_id {
            Some(id) => match soft(w.get(id))? {
                Ok(Some(rec)) if rec.device_id == *device && rec.status().is_terminal() => {
                    Some(rec)
                }
                _ => None,
            },
            None => None,
        };
        let Some(mut rec) = known else {
            self.counters.unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(device_id = %device, command_id = ?resp.command_id, "dropping response to an unknown command");
            return Ok(());
        };
        let late = LateResponse {
            success: resp.success,
            result: resp.result.as_ref(),
            error: resp.error.as_deref(),
            received_at: i64::try_from(now)
                .ok()
                .and_then(fleetmq_device_plugins::rfc3339::format_utc_ms),
        };
        let json = serde_json::to_string(&late).unwrap_or_else(|_| "null".to_owned());
        if moved(rec.record_late_response(json)) {
            w.put(&rec)?;
        }
        self.counters.late.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(device_id = %device, command_id = %rec.command_id, status = %rec.status(), "late response");
        Ok(())
    }
}
