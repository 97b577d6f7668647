//! Markdown output: the results side by side, ratios of fleetmq against Mosquitto and
//! bare rumqttd, and the CPU each side used (this is a 2-core machine: the generator and
//! the broker share it).

use std::fmt::Write as _;
use std::time::Duration;

use crate::broker::Kind;
use crate::scenarios::{ConnRate, Cpu, FanIn, Idle, Latency, Params};

/// Everything measured for one broker.
pub struct Results {
    pub kind: Kind,
    pub qos0: Option<FanIn>,
    pub qos1: Option<FanIn>,
    pub latency: Option<Latency>,
    pub connect_anonymous: Option<ConnRate>,
    pub connect_device: Option<ConnRate>,
    pub idle: Option<Idle>,
    pub rss_start: Option<u64>,
    pub rss_end: Option<u64>,
    /// The broker's own counters at the end, when it has any.
    pub counters: Option<String>,
    pub errors: Vec<String>,
}

impl Results {
    pub fn new(kind: Kind) -> Results {
        Results {
            kind,
            qos0: None,
            qos1: None,
            latency: None,
            connect_anonymous: None,
            connect_device: None,
            idle: None,
            rss_start: None,
            rss_end: None,
            counters: None,
            errors: Vec::new(),
        }
    }

    /// Keeps a scenario's result, or notes why it failed.
    pub fn note<T>(&mut self, scenario: &str, result: anyhow::Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("load:   {scenario} failed: {e:#}");
                self.errors
                    .push(format!("{}: {scenario} failed: {e:#}", self.kind.label()));
                None
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// Not compared (loss: a ratio of percentages means little).
    None,
}

struct Metric {
    name: &'static str,
    better: Better,
    value: fn(&Results) -> Option<f64>,
    /// The median run's cell (may say more than the value).
    show: fn(&Results, f64) -> String,
    /// How a bare value is written (the min–max range).
    unit: fn(f64) -> String,
    /// CPU during the scenario that produced the value.
    cpu: fn(&Results) -> Option<Cpu>,
}

fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    // Groups of three from the right: the first group takes the remainder.
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = String::from(if n < 0 { "-" } else { "" });
    out.push_str(&digits[..first.min(digits.len())]);
    let mut at = first;
    while at < digits.len() {
        out.push(',');
        out.push_str(&digits[at..at + 3]);
        at += 3;
    }
    out
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn loss(f: &FanIn) -> String {
    let mut s = format!(
        "{:.2} % ({} of {})",
        f.loss_pct(),
        int(f.sent.saturating_sub(f.received) as f64),
        int(f.sent as f64)
    );
    if f.bad_payloads > 0 {
        let _ = write!(s, ", {} bad payloads", f.bad_payloads);
    }
    s
}

fn conn(c: &ConnRate, v: f64) -> String {
    if c.failed == 0 {
        int(v)
    } else {
        format!("{} ({} failed)", int(v), c.failed)
    }
}

fn metrics() -> Vec<Metric> {
    let plain: fn(&Results, f64) -> String = |_, v| int(v);
    vec![
        Metric {
            name: "QoS 0 fan-in, msgs/s received",
            better: Better::Higher,
            value: |r| r.qos0.map(|f| f.rate()),
            show: plain,
            unit: int,
            cpu: |r| r.qos0.map(|f| f.cpu),
        },
        Metric {
            name: "QoS 0 fan-in, loss",
            better: Better::None,
            value: |r| r.qos0.map(|f| f.loss_pct()),
            show: |r, _| r.qos0.as_ref().map(loss).unwrap_or_default(),
            unit: int,
            cpu: |r| r.qos0.map(|f| f.cpu),
        },
        Metric {
            name: "QoS 1 fan-in, msgs/s received",
            better: Better::Higher,
            value: |r| r.qos1.map(|f| f.rate()),
            show: plain,
            unit: int,
            cpu: |r| r.qos1.map(|f| f.cpu),
        },
        Metric {
            name: "QoS 1 fan-in, loss",
            better: Better::None,
            value: |r| r.qos1.map(|f| f.loss_pct()),
            show: |r, _| r.qos1.as_ref().map(loss).unwrap_or_default(),
            unit: int,
            cpu: |r| r.qos1.map(|f| f.cpu),
        },
        Metric {
            name: "QoS 1 round trip p50, µs",
            better: Better::Lower,
            value: |r| r.latency.as_ref().map(|l| micros(l.percentile(50))),
            show: plain,
            unit: int,
            cpu: |r| r.latency.as_ref().map(|l| l.cpu),
        },
        Metric {
            name: "QoS 1 round trip p99, µs",
            better: Better::Lower,
            value: |r| r.latency.as_ref().map(|l| micros(l.percentile(99))),
            show: plain,
            unit: int,
            cpu: |r| r.latency.as_ref().map(|l| l.cpu),
        },
        Metric {
            name: "connections/s, new anonymous clients",
            better: Better::Higher,
            value: |r| r.connect_anonymous.as_ref().map(ConnRate::rate),
            show: |r, v| {
                r.connect_anonymous
                    .as_ref()
                    .map(|c| conn(c, v))
                    .unwrap_or_default()
            },
            unit: int,
            cpu: |r| r.connect_anonymous.as_ref().map(|c| c.cpu),
        },
        Metric {
            name: "connections/s, device reconnects (cached auth)",
            better: Better::Higher,
            value: |r| r.connect_device.as_ref().map(ConnRate::rate),
            show: |r, v| {
                r.connect_device
                    .as_ref()
                    .map(|c| conn(c, v))
                    .unwrap_or_default()
            },
            unit: int,
            cpu: |r| r.connect_device.as_ref().map(|c| c.cpu),
        },
        Metric {
            name: "RSS per idle connection, bytes",
            better: Better::Lower,
            value: |r| r.idle.map(|i| i.bytes_per_conn()),
            show: plain,
            unit: int,
            cpu: |r| r.idle.map(|i| i.cpu),
        },
        Metric {
            name: "RSS at start → after all scenarios",
            better: Better::Lower,
            value: |r| r.rss_end.map(|b| b as f64),
            show: |r, _| {
                let start = r.rss_start.map(mib).unwrap_or_default();
                format!("{start} → {}", r.rss_end.map(mib).unwrap_or_default())
            },
            unit: |v| mib(v as u64),
            cpu: |_| None,
        },
    ]
}

/// Whether something else on the machine took a noticeable share of CPU meanwhile.
fn disturbed(cpu: Cpu) -> bool {
    cpu.other.as_secs_f64() > DISTURBED_CORES * cpu.wall.as_secs_f64()
}

/// Cores busy outside the broker and the generator above which a value is flagged.
const DISTURBED_CORES: f64 = 0.15;

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn header(out: &mut String, cells: &[String]) {
    row(out, cells);
    let rule: Vec<String> = cells
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { "---".into() } else { "---:".into() })
        .collect();
    row(out, &rule);
}

/// Every run of one broker (`--repeat`); cells show the median run.
pub struct Runs {
    pub kind: Kind,
    pub runs: Vec<Results>,
}

impl Runs {
    /// The runs that count for `m`: the undisturbed ones if there are any, else all.
    fn pool(&self, m: &Metric) -> Vec<(&Results, f64)> {
        let all: Vec<(&Results, f64)> = self
            .runs
            .iter()
            .filter_map(|r| (m.value)(r).map(|x| (r, x)))
            .collect();
        let quiet: Vec<(&Results, f64)> = all
            .iter()
            .copied()
            .filter(|(r, _)| !(m.cpu)(r).is_some_and(disturbed))
            .collect();
        if quiet.is_empty() {
            all
        } else {
            quiet
        }
    }

    /// The run with the median value of `m` (the lower one of two middles), and that value.
    fn median(&self, m: &Metric) -> Option<(&Results, f64)> {
        let mut v = self.pool(m);
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }

    fn cell(&self, m: &Metric) -> String {
        let Some((run, v)) = self.median(m) else {
            return "–".into();
        };
        let mut cell = (m.show)(run, v);
        let pool = self.pool(m);
        let lo = pool.iter().map(|p| p.1).reduce(f64::min).unwrap_or(v);
        let hi = pool.iter().map(|p| p.1).reduce(f64::max).unwrap_or(v);
        if pool.len() > 1 && m.better != Better::None {
            let _ = write!(cell, " ({}–{})", (m.unit)(lo), (m.unit)(hi));
        }
        let measured = self.runs.iter().filter(|r| (m.value)(r).is_some()).count();
        if pool.len() < measured {
            let _ = write!(cell, " [{} of {measured} runs]", pool.len());
        }
        if (m.cpu)(run).is_some_and(disturbed) {
            cell.push_str(" †");
        }
        cell
    }
}

fn ratio(m: &Metric, ours: &Runs, theirs: &Runs) -> String {
    match (ours.median(m), theirs.median(m)) {
        (Some((_, a)), Some((_, b))) if b > 0.0 && m.better != Better::None => {
            format!("{:.2}x", a / b)
        }
        _ => "–".into(),
    }
}

fn cpu_cell(cpu: Cpu) -> String {
    let wall = cpu.wall.as_secs_f64().max(1e-9);
    format!(
        "{:.2} / {:.2} / {:.2}",
        cpu.broker.as_secs_f64() / wall,
        cpu.client.as_secs_f64() / wall,
        cpu.other.as_secs_f64() / wall
    )
}

fn fan_cell(f: &FanIn) -> String {
    let per_cpu = f.received as f64 / f.cpu.broker.as_secs_f64().max(1e-9);
    let mut cell = format!(
        "{}; {} msgs/CPU-s; publishers done in {:.2} s",
        cpu_cell(f.cpu),
        int(per_cpu),
        f.publish_secs
    );
    if let Some(dropped) = f.telemetry_dropped {
        let _ = write!(cell, "; telemetry points dropped {}", int(dropped as f64));
    }
    cell
}

fn conn_cell(c: &ConnRate) -> String {
    let per_cpu = c.ok as f64 / c.cpu.broker.as_secs_f64().max(1e-9);
    let mut cell = format!(
        "{}; {} conns/CPU-s; CONNACK p50/p99/max {}/{}/{} µs",
        cpu_cell(c.cpu),
        int(per_cpu),
        int(micros(c.connack_percentile(50))),
        int(micros(c.connack_percentile(99))),
        int(micros(c.connack.last().copied().unwrap_or_default())),
    );
    if c.not_closed > 0 {
        let _ = write!(cell, "; {} not closed after DISCONNECT", c.not_closed);
    }
    cell
}

/// A detail row: for each broker, `detail` of the run that is the median of `by`.
fn detail_row(
    out: &mut String,
    all: &[Runs],
    name: &str,
    by: &Metric,
    detail: fn(&Results) -> Option<String>,
) {
    let mut cells = vec![name.to_owned()];
    cells.extend(all.iter().map(|k| {
        k.median(by)
            .and_then(|(r, _)| detail(r))
            .unwrap_or_else(|| "–".into())
    }));
    row(out, &cells);
}

/// What was run, for the report's heading.
pub struct Setup<'a> {
    pub params: &'a Params,
    pub mode: &'a str,
    pub client_threads: usize,
    pub repeat: usize,
    pub took: Duration,
}

fn heading(out: &mut String, s: &Setup<'_>) {
    let p = s.params;
    let _ = writeln!(
        out,
        "\n## fleetmq load benchmark ({}: {} publishers, {}-byte payloads, QoS 0 {} msgs, QoS 1 {} msgs with {} outstanding per publisher, {} round trips, {} connects x{} in flight, {} idle connections; generator on {} thread(s); {} run(s) per broker: median and (min–max) of the undisturbed runs, of all runs when none was; {:.0} s)\n",
        s.mode,
        p.publishers,
        p.payload,
        int(p.qos0_messages as f64),
        int(p.qos1_messages as f64),
        p.window,
        int(p.rr_iterations as f64),
        int(p.connections as f64),
        p.connect_concurrency,
        int(p.idle as f64),
        s.client_threads,
        s.repeat,
        s.took.as_secs_f64(),
    );
}

/// The whole report.
pub fn render(all: &[Runs], setup: &Setup<'_>, notes: &[String]) -> String {
    let mut out = String::new();
    heading(&mut out, setup);
    if all.is_empty() {
        let _ = writeln!(out, "No broker could be measured.\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
        return out;
    }
    let mut cells = vec!["metric".to_owned()];
    cells.extend(all.iter().map(|k| k.kind.label().to_owned()));
    header(&mut out, &cells);
    for m in metrics() {
        let mut cells = vec![m.name.to_owned()];
        cells.extend(all.iter().map(|k| k.cell(&m)));
        row(&mut out, &cells);
    }
    let flagged = all.iter().any(|k| {
        metrics().iter().any(|m| {
            k.median(m)
                .and_then(|(r, _)| (m.cpu)(r))
                .is_some_and(disturbed)
        })
    });
    if flagged {
        let _ = writeln!(
            out,
            "\n† the run shown was disturbed: other processes kept more than {DISTURBED_CORES} of a core busy meanwhile."
        );
    }
    ratios(&mut out, all);
    details(&mut out, all);
    let errors: Vec<&String> = all
        .iter()
        .flat_map(|k| &k.runs)
        .flat_map(|r| &r.errors)
        .chain(notes)
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for e in errors {
            let _ = writeln!(out, "- {e}");
        }
    }
    if all
        .iter()
        .flat_map(|k| &k.runs)
        .any(|r| r.counters.is_some())
    {
        let _ = writeln!(out, "\nBroker counters at the end of each run:\n");
    }
    for r in all.iter().flat_map(|k| &k.runs) {
        if let Some(c) = &r.counters {
            let _ = writeln!(out, "- {}: {c}", r.kind.label());
        }
    }
    for r in all.iter().flat_map(|k| &k.runs) {
        let first = [&r.connect_anonymous, &r.connect_device]
            .into_iter()
            .flatten()
            .find_map(|c| c.first_error.clone());
        if let Some(e) = first {
            let _ = writeln!(out, "- {}: first connection failure: {e}", r.kind.label());
        }
    }
    out
}

fn ratios(out: &mut String, all: &[Runs]) {
    let is_ours = |k: &&Runs| matches!(k.kind, Kind::Fleetmq { .. });
    let ours: Vec<&Runs> = all.iter().filter(is_ours).collect();
    let theirs: Vec<&Runs> = all.iter().filter(|k| !is_ours(k)).collect();
    if ours.is_empty() || theirs.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nRatios of the medians, fleetmq ÷ baseline (throughput: higher is better; latency and memory: lower is better):\n");
    let mut cells = vec!["metric".to_owned()];
    for t in &theirs {
        for o in &ours {
            cells.push(format!("{} vs {}", o.kind.label(), t.kind.label()));
        }
    }
    header(out, &cells);
    for m in metrics().iter().filter(|m| m.better != Better::None) {
        let mut cells = vec![m.name.to_owned()];
        for t in &theirs {
            for o in &ours {
                cells.push(ratio(m, o, t));
            }
        }
        row(out, &cells);
    }
}

fn details(out: &mut String, all: &[Runs]) {
    let _ = writeln!(out, "\nCPU during each scenario in cores busy (broker / generator / anything else on the machine, which should be ~0), and broker work per CPU-second (from the median run):\n");
    let mut cells = vec!["scenario".to_owned()];
    cells.extend(all.iter().map(|k| k.kind.label().to_owned()));
    header(out, &cells);
    let m = metrics();
    let by = |name: &str| m.iter().find(|m| m.name == name);
    let (Some(q0), Some(q1), Some(p50), Some(anon), Some(dev), Some(idle)) = (
        by("QoS 0 fan-in, msgs/s received"),
        by("QoS 1 fan-in, msgs/s received"),
        by("QoS 1 round trip p50, µs"),
        by("connections/s, new anonymous clients"),
        by("connections/s, device reconnects (cached auth)"),
        by("RSS per idle connection, bytes"),
    ) else {
        return;
    };
    detail_row(out, all, "QoS 0 fan-in", q0, |r| {
        r.qos0.as_ref().map(fan_cell)
    });
    detail_row(out, all, "QoS 1 fan-in", q1, |r| {
        r.qos1.as_ref().map(fan_cell)
    });
    detail_row(out, all, "connections, anonymous", anon, |r| {
        r.connect_anonymous.as_ref().map(conn_cell)
    });
    detail_row(out, all, "connections, devices", dev, |r| {
        r.connect_device.as_ref().map(conn_cell)
    });
    detail_row(out, all, "round trip p90 / max, µs", p50, |r| {
        r.latency.as_ref().map(|l| {
            let max = l.samples.last().copied().unwrap_or_default();
            format!("{} / {}", int(micros(l.percentile(90))), int(micros(max)))
        })
    });
    detail_row(
        out,
        all,
        "idle: connections held, RSS before → after",
        idle,
        |r| {
            r.idle.map(|i| {
                format!(
                    "{}, {} → {}",
                    int(i.held as f64),
                    mib(i.rss_before),
                    mib(i.rss_after)
                )
            })
        },
    );
}
