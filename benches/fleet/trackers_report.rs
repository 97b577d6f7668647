//! Scenario 4's rows of the report: the tracker targets, then how the broker got there.

use std::fmt::Write as _;

use crate::report::{dagger, int, ms, verdict};
use crate::trackers::{LoadRun, TrackerResults};

/// Sustained records/s acked with every record durably stored first.
const RECORDS_TARGET: f64 = 50_000.0;
/// Broker memory per idle tracker connection: 4 KB, read as 4,096 bytes.
const IDLE_BYTES_TARGET: f64 = 4_096.0;

/// The rows of the results table.
pub fn rows(out: &mut String, r: &TrackerResults) {
    if let Some(idle) = &r.idle {
        let per = idle.per_tracker();
        let _ = writeln!(
            out,
            "| 4. trackers, idle | {} trackers logged in by IMEI, silent | **{} bytes of broker RSS per tracker** ({:.1} → {:.1} MiB) | – | ≤ 4 KB (4,096 bytes) | {} |",
            int(idle.trackers as f64),
            int(per),
            mib(idle.rss_before),
            mib(idle.rss_after),
            verdict(per <= IDLE_BYTES_TARGET),
        );
    }
    for run in &r.loads {
        load_row(out, run);
    }
}

fn load_row(out: &mut String, run: &LoadRun) {
    let offered = run.spec.rate.map_or("unpaced".into(), |r| {
        format!("paced at {} records/s", int(r))
    });
    let s = &run.sim;
    let _ = writeln!(
        out,
        "| 4. trackers, {offered} | {} trackers, {} records per Codec 8E packet, one packet awaiting its ack each, {:.1} s | **{} records/s acked**{} ({} packets/s); {} ack timeouts, {} errors | {} / {} / {} ms (ack) | ≥ 50,000 records/s | {} |",
        int(run.trackers as f64),
        run.spec.records_per_packet,
        run.window.as_secs_f64(),
        int(run.records_per_s()),
        dagger(run.cpu.disturbed()),
        int(s.packets_acked as f64 / run.window.as_secs_f64().max(1e-9)),
        s.ack_timeouts,
        s.errors,
        ms(run.p50),
        ms(run.p99),
        ms(run.max),
        verdict(run.records_per_s() >= RECORDS_TARGET),
    );
}

/// The lines under the table.
pub fn details(out: &mut String, r: &TrackerResults) {
    if let Some(idle) = &r.idle {
        let _ = writeln!(
            out,
            "- Trackers: {} provisioned (plugin teltonika) in {:.1} s; the {} idle ones logged in within {:.1} s. Broker RSS {:.1} MiB before, {:.1} MiB once idle after the logins ({} bytes per tracker), {:.1} MiB {} s later, when the blocking-pool threads the logins started had exited; threads {} → {} → {}.",
            int(r.provisioned as f64),
            r.provision_time.as_secs_f64(),
            int(idle.trackers as f64),
            idle.login_time.as_secs_f64(),
            mib(idle.rss_before),
            mib(idle.rss_settled),
            int(idle.rss_settled.saturating_sub(idle.rss_before) as f64 / idle.trackers.max(1) as f64),
            mib(idle.rss_after),
            crate::trackers::BLOCKING_THREAD_KEEP_ALIVE.as_secs() + 2,
            idle.threads[0],
            idle.threads[1],
            idle.threads[2],
        );
    }
    for run in &r.loads {
        let _ = writeln!(
            out,
            "- Trackers, {} × {} records: {} telemetry commits/s, {} records per commit; broker CPU {:.2} cores, {:.1} µs per record; generator {:.2} cores; other processes {:.2} cores. Over the whole run {} records acked and {} stored{}.",
            run.spec.rate.map_or("unpaced".into(), |r| format!("paced at {}/s", int(r))),
            run.spec.records_per_packet,
            int(run.commits_per_s()),
            int(run.records_per_commit()),
            run.cpu.broker,
            run.cpu_per_record_us(),
            run.cpu.client,
            run.cpu.other,
            int(run.acked_total as f64),
            int(run.stored_total as f64),
            if run.stored_total >= run.acked_total {
                ""
            } else {
                " (**fewer stored than acked**)"
            },
        );
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}
