//! [`TeltonikaPlugin`]: a tracker as a device of the fleet (SPEC §10). Its telemetry
//! reaches the store as the JSON point the connection built from each record (so it is
//! read like the `json` plugin's); its commands are Codec 12 text commands; its answers
//! carry no command id, so they are matched by the response pattern of each command
//! type (`[teltonika.responses]`), else to the oldest command sent.

use regex::Regex;
use serde_json::json;

use crate::json::JsonPlugin;
use crate::plugin::{
    Command, CommandResponse, DevicePlugin, PendingCommand, PluginError, RawTelemetry, Telemetry,
};
use crate::teltonika::encode_command;

/// 2000-01-01T00:00:00Z: a record stamped earlier has no clock behind it.
const MIN_RECORD_TS_MS: u64 = 946_684_800_000;
/// How far ahead of the broker's clock a record's time may be.
const MAX_SKEW_MS: u64 = 5 * 60_000;

/// The `teltonika` plugin, with the expected response pattern of each command type.
#[derive(Debug, Clone, Default)]
pub struct TeltonikaPlugin {
    responses: Vec<(String, Regex)>,
}

impl TeltonikaPlugin {
    /// The plugin's name in device records.
    pub const NAME: &'static str = "teltonika";

    /// A plugin matching answers by `responses`: (command type, pattern of its answer).
    pub fn new(responses: Vec<(String, Regex)>) -> TeltonikaPlugin {
        TeltonikaPlugin { responses }
    }

    /// The text a command sends: its `params.text` when given, else its type.
    pub fn command_text<'a>(cmd: &Command<'a>) -> &'a str {
        cmd.params
            .get("text")
            .and_then(|t| t.as_str())
            .unwrap_or(cmd.kind)
    }

    /// The record's own time from a point built by `telemetry_json` (`{"ts":<ms>,…`),
    /// when it is plausible: after 2000-01-01 (a tracker without a clock sends 0) and
    /// not ahead of `received_at_ms` by more than 5 minutes. Buffered records may be
    /// months old, so the `json` plugin's one-year window does not apply.
    fn record_ts(payload: &[u8], received_at_ms: u64) -> Option<u64> {
        let rest = payload.strip_prefix(b"{\"ts\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let ts: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        (MIN_RECORD_TS_MS..=received_at_ms.saturating_add(MAX_SKEW_MS))
            .contains(&ts)
            .then_some(ts)
    }

    fn response_text(resp: &CommandResponse) -> Option<&str> {
        resp.result.as_ref()?.get("response")?.as_str()
    }
}

impl DevicePlugin for TeltonikaPlugin {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn decode_telemetry(
        &self,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Result<Telemetry, PluginError> {
        let mut t = JsonPlugin.decode_telemetry(payload, received_at_ms)?;
        if let Some(ts) = Self::record_ts(payload, received_at_ms) {
            t.ts_ms = ts;
        }
        Ok(t)
    }

    fn check_telemetry(
        &self,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Option<Result<RawTelemetry, PluginError>> {
        let checked = JsonPlugin.check_telemetry(payload, received_at_ms)?;
        Some(checked.map(|mut raw| {
            if let Some(ts) = Self::record_ts(payload, received_at_ms) {
                raw.ts_ms = ts;
            }
            raw
        }))
    }

    /// The Codec 12 message, whole (preamble, length, CRC): the connection writes it as
    /// it is.
    fn encode_command(&self, cmd: &Command<'_>) -> Result<Vec<u8>, PluginError> {
        if cmd.params.get("text").is_some_and(|t| !t.is_string()) {
            return Err(PluginError::WrongType {
                field: "params.text",
                expected: "a string",
            });
        }
        encode_command(Self::command_text(cmd)).map_err(|_| PluginError::InvalidField {
            field: "params.text",
            reason: "a Codec 12 command is printable ASCII of at most 4096 bytes",
        })
    }

    /// `payload` is the text of a Codec 12 response (type 0x06).
    fn decode_response(&self, payload: &[u8]) -> Result<CommandResponse, PluginError> {
        let text = String::from_utf8_lossy(payload);
        Ok(CommandResponse {
            command_id: None,
            success: true,
            result: Some(json!({ "response": text })),
            error: None,
        })
    }

    /// Whether `resp` matches the response pattern configured for `kind`; a type
    /// without one matches nothing (it is answered by the fallback).
    fn may_answer(&self, resp: &CommandResponse, kind: &str) -> bool {
        let Some(text) = Self::response_text(resp) else {
            return false;
        };
        self.responses
            .iter()
            .any(|(k, pattern)| k == kind && pattern.is_match(text))
    }

    /// The oldest pending command whose pattern matches, else the oldest pending one.
    fn match_response(
        &self,
        resp: &CommandResponse,
        pending: &[PendingCommand<'_>],
    ) -> Option<usize> {
        let oldest = |allowed: &dyn Fn(&PendingCommand<'_>) -> bool| {
            pending
                .iter()
                .enumerate()
                .filter(|(_, p)| allowed(p))
                .min_by_key(|(i, p)| (p.created_at_ms, *i))
                .map(|(i, _)| i)
        };
        oldest(&|p| self.may_answer(resp, p.kind)).or_else(|| oldest(&|_| true))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn plugin() -> TeltonikaPlugin {
        TeltonikaPlugin::new(vec![
            ("getinfo".into(), Regex::new("^INI:").unwrap()),
            ("getver".into(), Regex::new("^Ver:").unwrap()),
        ])
    }

    fn pending<'a>(kind: &'a str, id: &'a str, at: u64) -> PendingCommand<'a> {
        PendingCommand {
            command_id: id,
            kind,
            created_at_ms: at,
        }
    }

    #[test]
    fn commands_are_codec12_of_their_text_or_type() {
        let p = plugin();
        let none = Value::Null;
        let cmd = |kind, params| Command {
            command_id: "c1",
            kind,
            params,
        };
        // The published getinfo example, byte for byte.
        let getinfo = p.encode_command(&cmd("getinfo", &none)).unwrap();
        assert_eq!(
            getinfo,
            [
                0, 0, 0, 0, 0, 0, 0, 0x0F, 0x0C, 0x01, 0x05, 0, 0, 0, 0x07, b'g', b'e', b't', b'i',
                b'n', b'f', b'o', 0x01, 0, 0, 0x43, 0x12
            ]
        );
        let text = json!({"text": "setdigout 1"});
        let sent = p.encode_command(&cmd("digout", &text)).unwrap();
        assert_eq!(sent, encode_command("setdigout 1").unwrap());
        let bad = json!({"text": "é"});
        assert!(p.encode_command(&cmd("x", &bad)).is_err());
        let not_text = json!({"text": 3});
        assert!(p.encode_command(&cmd("x", &not_text)).is_err());
    }

    #[test]
    fn points_keep_their_record_time_unless_it_has_no_clock() {
        let p = plugin();
        let now = 1_796_000_000_000;
        let at = |ts: u64| {
            let payload = format!(r#"{{"ts":{ts},"lat":1.5}}"#);
            let checked = p.check_telemetry(payload.as_bytes(), now).unwrap().unwrap();
            let decoded = p.decode_telemetry(payload.as_bytes(), now).unwrap();
            assert_eq!(checked.ts_ms, decoded.ts_ms);
            decoded.ts_ms
        };
        assert_eq!(at(1_560_161_086_000), 1_560_161_086_000, "a 2019 record");
        assert_eq!(at(0), now, "no clock");
        assert_eq!(at(now + 3_600_000), now, "an hour ahead");
        assert_eq!(at(now + 60_000), now + 60_000);
    }

    #[test]
    fn answers_match_by_pattern_then_oldest() {
        let p = plugin();
        let waiting = [
            pending("getver", "a", 10),
            pending("getinfo", "b", 20),
            pending("getinfo", "c", 30),
            pending("reset", "d", 5),
        ];
        let ini = p.decode_response(b"INI:2019/7/22 7:22 RTC:...").unwrap();
        assert_eq!(
            ini.result,
            Some(json!({"response": "INI:2019/7/22 7:22 RTC:..."}))
        );
        assert_eq!(p.match_response(&ini, &waiting), Some(1), "oldest getinfo");
        let ver = p.decode_response(b"Ver:03.25.14").unwrap();
        assert_eq!(p.match_response(&ver, &waiting), Some(0));
        let other = p.decode_response(b"DOUT1:1").unwrap();
        assert_eq!(p.match_response(&other, &waiting), Some(3), "oldest of all");
        assert_eq!(p.match_response(&other, &[]), None);
    }
}
