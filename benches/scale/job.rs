//! `--job`: a job (SPEC §12) to every one of N connected devices at full speed (no
//! `rollout` limits); every device answers each command at once. Measures the time
//! until every command was created, until the last device answered and until the job
//! was `completed`, commands/s and the broker's CPU per command. Two jobs, one after
//! the other, to tell one-off costs (the devices' first answers) from the steady state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::task::JoinSet;

use crate::broker::{self, Broker};
use crate::http::Http;
use crate::run::{answer, connect_all, device_topics, rss, settle_memory};
use crate::Args;

/// How often the job's progress is read (`GET /api/v1/jobs/{id}` counts every command).
const POLL: Duration = Duration::from_millis(250);

struct Jobs {
    provision: Duration,
    connect: Duration,
    /// RSS with no device connected, and with all connected and idle.
    rss_empty: u64,
    rss_idle: u64,
    runs: Vec<JobReport>,
}

struct JobReport {
    devices: usize,
    /// From the `POST /api/v1/jobs` until `pending` was 0 (polled).
    created: Duration,
    /// Until the last device answered (seen by the devices).
    answered: Duration,
    /// Until the job read `completed` (polled).
    completed: Duration,
    broker_cpu: Duration,
    counts: serde_json::Value,
    /// RSS once the job completed and the broker settled: every device's command
    /// window, mailbox and queue were used once.
    rss_after: u64,
}

pub async fn run(args: &Args) -> anyhow::Result<String> {
    let n = args.devices;
    eprintln!("scale --job: binary {}", broker::binary().display());
    let limit = (n + 1_000).to_string();
    let env = [("FLEETMQ_MQTT_MAX_CONNECTIONS", limit.as_str())];
    let mut b = Broker::start_with("fleetmq-scale-job", &env).await?;
    let started = Instant::now();
    b.provision_bulk(n).await?;
    let provision = started.elapsed();
    settle_memory(&b).await;
    let rss_empty = rss(b.pid())?;
    eprintln!("scale --job: {n} devices provisioned in {provision:?}; connecting ...");
    let devices = b.devices.clone();
    let (clients, connect) = connect_all(b.mqtt, &devices, args.at_once, device_topics).await?;
    let answers = Arc::new(AtomicUsize::new(0));
    let mut answering = JoinSet::new();
    for (client, device) in clients.into_iter().zip(devices.iter()) {
        answering.spawn(answer(client, device.id.clone(), answers.clone()));
    }
    settle_memory(&b).await;
    let rss_idle = rss(b.pid())?;
    eprintln!("scale --job: connected in {connect:?}; the job ...");
    let mut runs = Vec::new();
    for round in 0..2 {
        answers.store(0, Ordering::Relaxed);
        let mut report = job(&b, n, &answers, round).await?;
        settle_memory(&b).await;
        report.rss_after = rss(b.pid())?;
        runs.push(report);
    }
    answering.abort_all();
    Ok(Jobs {
        provision,
        connect,
        rss_empty,
        rss_idle,
        runs,
    }
    .render())
}

/// Creates the job and follows it to `completed`.
async fn job(
    b: &Broker,
    n: usize,
    answers: &AtomicUsize,
    round: usize,
) -> anyhow::Result<JobReport> {
    let mut http = Http::new(b.admin);
    let body = serde_json::json!({"name": format!("scale-{round}"), "target": {"all": true},
        "command": {"type": "PING"}});
    let cpu_before = broker::cpu_time(b.pid())?;
    let t0 = Instant::now();
    let r = http.post("/api/v1/jobs", &body).await?;
    if r.status != 201 {
        bail!("POST /api/v1/jobs answered {}: {}", r.status, r.text());
    }
    let id = r.json()?["job_id"].as_str().context("job_id")?.to_owned();
    let (mut created, mut answered) = (None, None);
    let deadline = t0 + Duration::from_secs(600);
    loop {
        // Between polls, watch the devices' answers closely (a cheap counter).
        let next_poll = Instant::now() + POLL;
        while Instant::now() < next_poll {
            if answered.is_none() && answers.load(Ordering::Relaxed) >= n {
                answered = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = http.get(&format!("/api/v1/jobs/{id}")).await?;
        let job = r.json()?;
        if created.is_none() && job["counts"]["pending"] == 0 {
            created = Some(t0.elapsed());
        }
        if job["status"] == "completed" {
            return Ok(JobReport {
                devices: n,
                created: created.unwrap_or_default(),
                answered: answered.unwrap_or_else(|| t0.elapsed()),
                completed: t0.elapsed(),
                broker_cpu: broker::cpu_time(b.pid())?.saturating_sub(cpu_before),
                counts: job["counts"].clone(),
                rss_after: 0,
            });
        }
        if job["status"] != "running" || Instant::now() > deadline {
            bail!("the job did not complete: {job}");
        }
    }
}

/// One duration of a job's report.
type Pick = fn(&JobReport) -> Duration;

impl Jobs {
    fn render(&self) -> String {
        let n = self.runs.first().map_or(0, |r| r.devices);
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let per_s = |d: Duration| format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9));
        let mut t = String::new();
        let _ = writeln!(t, "## scale --job: jobs to {n} connected devices\n");
        let _ = writeln!(t, "| metric | first job | second job |\n|---|---:|---:|");
        let rows: [(&str, Pick); 3] = [
            ("every command created (`pending` 0, polled)", |r| r.created),
            ("last device answered", |r| r.answered),
            ("job `completed` (polled every 250 ms)", |r| r.completed),
        ];
        for (metric, f) in rows {
            let cells: Vec<String> = self.runs.iter().map(|r| s(f(r))).collect();
            let _ = writeln!(t, "| {metric} | {} |", cells.join(" | "));
        }
        let cells: Vec<String> = self.runs.iter().map(|r| per_s(r.completed)).collect();
        let _ = writeln!(t, "| commands/s, to `completed` | {} |", cells.join(" | "));
        let cpu = |r: &JobReport| {
            let each = r.broker_cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
            format!("{each:.0} µs")
        };
        let cells: Vec<String> = self.runs.iter().map(cpu).collect();
        let _ = writeln!(t, "| broker CPU per command | {} |", cells.join(" | "));
        let per_device =
            |rss: u64| format!("{} B", rss.saturating_sub(self.rss_empty) / n.max(1) as u64);
        let cells: Vec<String> = self.runs.iter().map(|r| per_device(r.rss_after)).collect();
        let _ = writeln!(
            t,
            "| RSS per device 15 s after the job (idle before any: {}) | {} |",
            per_device(self.rss_idle),
            cells.join(" | ")
        );
        for r in &self.runs {
            let _ = writeln!(t, "\nfinal counts: {}", r.counts);
        }
        let _ = writeln!(
            t,
            "provisioning (bulk route): {:.2} s; connecting: {:.2} s",
            self.provision.as_secs_f64(),
            self.connect.as_secs_f64()
        );
        t
    }
}
