//! The markdown report: one table with the targets, then where the time went.

use std::fmt::Write as _;
use std::time::Duration;

use crate::commands::CommandRun;
use crate::disk::DiskCost;
use crate::fanin::{FanInResult, Mode};
use crate::telemetry::TelemetryRun;
use crate::trackers::TrackerResults;
use crate::trackers_report;

/// Command round-trip target: commands per second and p99.
const COMMANDS_TARGET: f64 = 10_000.0;
const COMMANDS_P99_TARGET: Duration = Duration::from_millis(5);
/// Telemetry ingest target: points persisted per second.
const TELEMETRY_TARGET: f64 = 100_000.0;
/// Fan-in target: storage may cost at most this share of throughput.
const FANIN_MAX_COST: f64 = 0.10;

/// Mean milliseconds between a command's timestamps (SPEC §5 record), and what the HTTP
/// request took beyond `created_at → completed_at` (`outside`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub queued_to_sent: f64,
    pub sent_to_delivered: f64,
    pub delivered_to_completed: f64,
    pub outside: f64,
    pub total: f64,
}

impl Phases {
    /// Fills in the request's latency and the part of it outside the record's phases.
    pub fn with_total(mut self, latency: Duration) -> Phases {
        self.total = latency.as_secs_f64() * 1e3;
        let inside = self.queued_to_sent + self.sent_to_delivered + self.delivered_to_completed;
        self.outside = self.total - inside;
        self
    }

    pub fn mean(all: &[Phases]) -> Phases {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Phases) -> f64| all.iter().map(f).sum::<f64>() / n;
        Phases {
            queued_to_sent: sum(|p| p.queued_to_sent),
            sent_to_delivered: sum(|p| p.sent_to_delivered),
            delivered_to_completed: sum(|p| p.delivered_to_completed),
            outside: sum(|p| p.outside),
            total: sum(|p| p.total),
        }
    }
}

/// The `q` quantile of an ascending slice (nearest rank); zero when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How the run was set up.
pub struct Setup {
    pub command: String,
    pub mode: &'static str,
    pub client_threads: usize,
    pub took: Duration,
    pub disk: Option<DiskCost>,
    pub provisioned: usize,
    pub provision_time: Duration,
}

/// Everything measured.
#[derive(Default)]
pub struct Results {
    pub commands: Vec<CommandRun>,
    pub telemetry: Vec<TelemetryRun>,
    pub fanin: Vec<FanInResult>,
    pub trackers: Option<TrackerResults>,
    pub alarms: Option<crate::alarms::AlarmRuns>,
    /// Scenarios that failed, with why.
    pub notes: Vec<String>,
}

pub fn int(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Marks a measurement taken while other processes kept the machine busy.
pub fn dagger(disturbed: bool) -> &'static str {
    if disturbed {
        "†"
    } else {
        ""
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

pub fn render(setup: &Setup, r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | load | result | latency p50 / p99 / max | target | |\n|---|---|---|---|---|---|"
    );
    for run in &r.commands {
        command_row(&mut out, run);
    }
    command_summary_rows(&mut out, &r.commands);
    for t in &r.telemetry {
        telemetry_row(&mut out, t);
    }
    if let Some(alarms) = &r.alarms {
        alarms.rows(&mut out);
    }
    fanin_rows(&mut out, &r.fanin);
    if let Some(t) = &r.trackers {
        trackers_report::rows(&mut out, t);
    }
    out.push('\n');
    details(&mut out, setup, r);
    out
}

fn command_row(out: &mut String, run: &CommandRun) {
    let mut lat = run.latencies.clone();
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    let not: usize = run.not_completed.values().sum();
    let not_detail = if not == 0 {
        String::new()
    } else {
        let parts: Vec<String> = (run.not_completed.iter())
            .map(|(k, v)| format!("{v} × {k}"))
            .collect();
        format!(" ({})", parts.join(", "))
    };
    let met = command_met(run);
    let _ = writeln!(
        out,
        "| 1. command round trip, C={} | {} devices, {} × `POST /api/v1/devices/{{id}}/commands?wait_ms=5000` over {} keep-alive connection(s) | **{} commands/s**; {} completed, {} not completed{} | {} / {} / {} ms | ≥ 10,000/s and p99 < 5 ms | {} |",
        run.concurrency,
        run.devices,
        int(run.requested as f64),
        run.concurrency,
        int(run.rate()),
        int(run.completed() as f64),
        not,
        not_detail,
        ms(percentile(&lat, 0.50)),
        ms(p99),
        ms(lat.last().copied().unwrap_or_default()),
        verdict(met),
    );
}

/// With several rounds (`--command-rounds`): per concurrency, the medians and how many
/// runs met the target.
fn command_summary_rows(out: &mut String, runs: &[CommandRun]) {
    let mut levels: Vec<usize> = runs.iter().map(|r| r.concurrency).collect();
    levels.sort_unstable();
    levels.dedup();
    for c in levels {
        let mine: Vec<&CommandRun> = runs.iter().filter(|r| r.concurrency == c).collect();
        if mine.len() < 2 {
            continue;
        }
        let mut rates: Vec<f64> = mine.iter().map(|r| r.rate()).collect();
        rates.sort_by(f64::total_cmp);
        let mut p99s: Vec<Duration> = mine
            .iter()
            .map(|r| {
                let mut lat = r.latencies.clone();
                lat.sort();
                percentile(&lat, 0.99)
            })
            .collect();
        p99s.sort();
        let met = mine.iter().filter(|r| command_met(r)).count();
        let _ = writeln!(
            out,
            "| 1. command round trip, C={c}, {} runs | as above | median **{} commands/s** (range {}–{}) | median p99 {} ms (range {}–{}) | ≥ 10,000/s and p99 < 5 ms | met in {met} of {} runs |",
            mine.len(),
            int(rates[rates.len() / 2]),
            int(rates[0]),
            int(rates[rates.len() - 1]),
            ms(p99s[p99s.len() / 2]),
            ms(p99s[0]),
            ms(p99s[p99s.len() - 1]),
            mine.len(),
        );
    }
}

/// Whether one run met the command target: rate, p99, and every command completed.
fn command_met(run: &CommandRun) -> bool {
    let mut lat = run.latencies.clone();
    lat.sort();
    let not: usize = run.not_completed.values().sum();
    run.rate() >= COMMANDS_TARGET && percentile(&lat, 0.99) < COMMANDS_P99_TARGET && not == 0
}

fn telemetry_row(out: &mut String, t: &TelemetryRun) {
    let c = &t.counters;
    let offered = t
        .offered
        .map_or("unpaced (as fast as the sockets take it)".into(), |r| {
            format!("paced at {} points/s", int(r))
        });
    let _ = writeln!(
        out,
        "| 2. telemetry ingest, {offered} | {} devices, QoS 0, {}-byte JSON, {} publishing tasks, {:.1} s | {} points/s published; **{} points/s persisted** ({} of {} stored; dropped: {} telemetry queue full, {} link queue full) | – | ≥ 100,000 points/s persisted | {} |",
        int(t.devices as f64),
        crate::telemetry::PAYLOAD.len(),
        t.tasks,
        t.window.as_secs_f64(),
        int(t.published_rate()),
        int(t.persisted_rate()),
        int(c.stored as f64),
        int(t.published as f64),
        int(c.dropped_telemetry_queue as f64),
        int(c.dropped_link_queue as f64),
        verdict(t.persisted_rate() >= TELEMETRY_TARGET),
    );
}

fn fanin_rows(out: &mut String, results: &[FanInResult]) {
    let find = |mode: Mode, paced: bool| {
        (results.iter())
            .find(|r| r.mode == mode && r.offered.is_some() == paced && !r.runs.is_empty())
            .map(|r| r.median())
    };
    for r in results {
        fanin_row(out, r);
    }
    // The target: the same device traffic with storage on and off.
    if let (Some(on), Some(off)) = (find(Mode::Telemetry, false), find(Mode::Unstored, false)) {
        let ratio = on.rate() / off.rate().max(1e-9);
        let stored = on.counters.stored as f64 / on.sent.max(1) as f64;
        let met = match (ratio >= 1.0 - FANIN_MAX_COST, stored >= 0.99) {
            (true, true) => verdict(true).to_owned(),
            (true, false) => format!(
                "{} only by dropping {:.0}% of the points",
                verdict(true),
                (1.0 - stored) * 100.0
            ),
            (false, _) => verdict(false).to_owned(),
        };
        let _ = writeln!(
            out,
            "| 3. fan-in cost of telemetry storage | throughput on ÷ off (`telemetry.store = false`), unpaced | **{:.2}** ({:+.0}%); {:.0}% of the telemetry stored | – | ≤ 10% slower (≥ 0.90) | {met} |",
            ratio,
            (ratio - 1.0) * 100.0,
            stored * 100.0,
        );
    }
    // Informative: storage, and the whole device path, per message.
    let pairs = [
        (Mode::Telemetry, Mode::Unstored, "storage on ÷ off"),
        (
            Mode::Telemetry,
            Mode::Plain,
            "device path and storage ÷ service client",
        ),
        (
            Mode::Unstored,
            Mode::Plain,
            "device path, storage off ÷ service client",
        ),
    ];
    for (a, b, what) in pairs {
        if let (Some(x), Some(y)) = (find(a, false), find(b, false)) {
            let ratio = x.rate() / y.rate().max(1e-9);
            let _ = writeln!(
                out,
                "| 3. fan-in, {what} | throughput, unpaced | **{ratio:.2}** ({:+.0}%) | – | (informative) | |",
                (ratio - 1.0) * 100.0,
            );
        }
        if let (Some(x), Some(y)) = (find(a, true), find(b, true)) {
            let ratio = x.cpu_per_message_us() / y.cpu_per_message_us().max(1e-9);
            let _ = writeln!(
                out,
                "| 3. fan-in, {what} | broker CPU per message, paced | **{ratio:.2}** ({:+.0}% CPU per message) | – | (informative) | |",
                (ratio - 1.0) * 100.0,
            );
        }
    }
}

fn fanin_row(out: &mut String, r: &FanInResult) {
    let m = r.median();
    let lost = 1.0 - m.received as f64 / (m.sent.max(1) as f64);
    let stored = if r.mode == Mode::Telemetry {
        let c = &m.counters;
        format!(
            "; {:.0}% stored ({} dropped at the link queue, {} at the telemetry queue)",
            100.0 * c.stored as f64 / m.sent.max(1) as f64,
            int(c.dropped_link_queue as f64),
            int(c.dropped_telemetry_queue as f64),
        )
    } else {
        String::new()
    };
    let load = format!(
        "{} publishers → 1 subscriber, QoS 0, {} messages per run, median of {}",
        r.runs.first().map_or(0, |x| x.publishers),
        int(m.sent as f64),
        r.runs.len(),
    );
    let result = match r.offered {
        None => {
            let rates: Vec<String> = (r.runs.iter())
                .map(|x| format!("{}{}", int(x.rate()), dagger(x.cpu.disturbed())))
                .collect();
            format!(
                "**{} msg/s received** (runs: {}); {:.1}% lost{stored}",
                int(m.rate()),
                rates.join(", "),
                lost * 100.0
            )
        }
        Some(_) => {
            let per: Vec<String> = (r.runs.iter())
                .map(|x| format!("{:.1}{}", x.cpu_per_message_us(), dagger(x.cpu.disturbed())))
                .collect();
            format!(
                "{} msg/s received, {:.1}% lost; **broker CPU {:.1} µs per message** (runs: {}){stored}",
                int(m.rate()),
                lost * 100.0,
                m.cpu_per_message_us(),
                per.join(", "),
            )
        }
    };
    let offered = r
        .offered
        .map_or("unpaced".into(), |x| format!("paced at {} msg/s", int(x)));
    let _ = writeln!(
        out,
        "| 3. fan-in {offered}, {} | {load} | {result} | – | – | |",
        r.mode.label(),
    );
}

fn details(out: &mut String, setup: &Setup, r: &Results) {
    let _ = writeln!(
        out,
        "† = other processes kept more than 0.15 of a core busy during that run.\n\nWhere the time goes:\n"
    );
    command_details(out, &r.commands);
    if let Some(d) = &setup.disk {
        let _ = writeln!(
            out,
            "- Durable writes on this disk (measured before the broker started): 4 KiB write + fdatasync p50 {} ms (p99 {}); one-row durable redb commit p50 {} ms (p99 {}).",
            ms(d.fsync_p50),
            ms(d.fsync_p99),
            ms(d.commit_p50),
            ms(d.commit_p99),
        );
    }
    telemetry_details(out, &r.telemetry);
    fanin_details(out, &r.fanin);
    if let Some(t) = &r.trackers {
        trackers_report::details(out, t);
    }
    for note in &r.notes {
        let _ = writeln!(out, "- Failed: {note}");
    }
    let _ = writeln!(
        out,
        "\nRun: `{}` ({} mode, {} generator threads, {} devices provisioned in {:.1} s, {:.0} s in all).",
        setup.command,
        setup.mode,
        setup.client_threads,
        int(setup.provisioned as f64),
        setup.provision_time.as_secs_f64(),
        setup.took.as_secs_f64(),
    );
}

fn command_details(out: &mut String, runs: &[CommandRun]) {
    for run in runs {
        let p = &run.phases;
        let per = run.cpu.broker_total.as_secs_f64() * 1e6 / run.completed().max(1) as f64;
        let _ = writeln!(
            out,
            "- Commands, C={}: mean latency {:.2} ms = created→sent {:.2} + sent→delivered {:.2} + delivered→completed {:.2} (record timestamps, 1 ms resolution) + {:.2} outside them (HTTP, auth, device lookup before `created_at`; the last commit, wake-up and answer after `completed_at`). Broker CPU {:.2} cores, {:.0} µs per command; generator {:.2} cores; other processes {:.2} cores.",
            run.concurrency,
            p.total,
            p.queued_to_sent,
            p.sent_to_delivered,
            p.delivered_to_completed,
            p.outside,
            run.cpu.broker,
            per,
            run.cpu.client,
            run.cpu.other,
        );
    }
}

fn telemetry_details(out: &mut String, runs: &[TelemetryRun]) {
    for t in runs {
        let c = &t.counters;
        let _ = writeln!(
            out,
            "- Telemetry, {}: the broker had read {} messages when the window closed and {} of {} in the end; {} write transactions ({} points each on average); last point stored {:.2} s after the first write. CPU while publishing: broker {:.2} cores, generator {:.2} cores, other processes {:.2} cores. Connecting the devices took {:.1} s.",
            t.offered.map_or("unpaced".into(), |r| format!("paced at {}/s", int(r))),
            int(t.received_in_window as f64),
            int(c.received as f64),
            int(t.published as f64),
            int(c.batches as f64),
            int(c.stored as f64 / c.batches.max(1) as f64),
            t.persist_wall.as_secs_f64(),
            t.cpu.broker,
            t.cpu.client,
            t.cpu.other,
            t.connect_time.as_secs_f64(),
        );
    }
}

fn fanin_details(out: &mut String, results: &[FanInResult]) {
    for f in results {
        let m = f.median();
        let c = &m.counters;
        let _ = writeln!(
            out,
            "- Fan-in {:?} {} (median run): broker {:.2} cores, generator {:.2} cores, other processes {:.2} cores; telemetry stored {} (dropped: {} telemetry queue, {} link queue).",
            f.mode,
            f.offered.map_or("unpaced".into(), |x| format!("paced at {}/s", int(x))),
            m.cpu.broker,
            m.cpu.client,
            m.cpu.other,
            int(c.stored as f64),
            int(c.dropped_telemetry_queue as f64),
            int(c.dropped_link_queue as f64),
        );
    }
}
