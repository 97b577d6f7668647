//! How a simulated tracker answers a Codec 12 command: in the shape of an FMB tracker's
//! SMS/GPRS command answers (Teltonika's "FMB SMS/GPRS command list"), so that
//! `[teltonika.responses]` patterns written for real trackers match the simulator too.
//!
//! | command | answer starts with |
//! |---|---|
//! | `getinfo` | `INI:` |
//! | `getver` | `Ver:` |
//! | `getgps` | `GPS:` |
//! | `getstatus` | `Data Link:` |
//! | anything else | the command, then ` OK` |

use fleetmq_device_plugins::teltonika::Gps;

/// What a tracker knows about itself when it answers.
#[derive(Debug, Clone)]
pub struct State<'a> {
    pub imei: &'a str,
    /// Seconds since the simulator started this tracker.
    pub uptime_s: u64,
    pub gps: Gps,
    /// Records sent and acknowledged so far.
    pub records_acked: u64,
}

/// The firmware version every simulated tracker reports.
pub const FIRMWARE: &str = "03.28.07.Rev.00";

/// The answer to `command` (its text as sent, surrounding whitespace ignored).
pub fn answer(command: &str, s: &State<'_>) -> String {
    let command = command.trim();
    let name = command.split_whitespace().next().unwrap_or_default();
    match name.to_ascii_lowercase().as_str() {
        "getinfo" => format!(
            "INI:2024/1/1 0:00 RTC:2024/1/1 0:00 RST:1 ERR:0 SR:0 BR:0 CF:0 FG:0 FL:0 \
             TU:0/0 UT:{} SMS:0 NOGPS:0:0 GPS:1 SAT:{} RS:3 RF:65 SF:1 MD:0 REC:{}",
            s.uptime_s, s.gps.satellites, s.records_acked
        ),
        "getver" => format!(
            "Ver:{FIRMWARE} GPS:AXN_5.10_3333 Hw:FMC130 Mod:44 IMEI:{} Init:2024-1-1 0:00 \
             Uptime:{} BL:1.10",
            s.imei, s.uptime_s
        ),
        "getgps" => format!(
            "GPS:1 Sat:{} Lat:{:.6} Long:{:.6} Alt:{} Speed:{} Dir:{}",
            s.gps.satellites,
            s.gps.latitude_deg(),
            s.gps.longitude_deg(),
            s.gps.altitude,
            s.gps.speed,
            s.gps.angle
        ),
        "getstatus" => "Data Link: 1 GPRS: 1 Phone: 0 SIM: 0 OP: 24602 Signal: 4 \
                        NewSMS: 0 Roaming: 0 SMSFull: 0 LAC: 1 Cell ID: 1 NetType: 1 FwUpd:-0"
            .to_owned(),
        "" => "empty command".to_owned(),
        _ => format!("{command} OK"),
    }
}
