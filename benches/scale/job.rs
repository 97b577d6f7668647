//! `--job`: one job (SPEC §12) to every one of N connected devices at full speed (no
//! `rollout` limits); every device answers each command at once. Measures the time
//! until every command was created, until the last device answered and until the job
//! was `completed`, commands/s and the broker's CPU per command.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::task::JoinSet;

use crate::broker::{self, Broker};
use crate::http::Http;
use crate::run::{answer, connect_all, device_topics};
use crate::Args;

/// How often the job's progress is read (`GET /api/v1/jobs/{id}` counts every command).
const POLL: Duration = Duration::from_millis(250);

struct JobReport {
    devices: usize,
    provision: Duration,
    connect: Duration,
    /// From the `POST /api/v1/jobs` until `pending` was 0 (polled).
    created: Duration,
    /// Until the last device answered (seen by the devices).
    answered: Duration,
    /// Until the job read `completed` (polled).
    completed: Duration,
    broker_cpu: Duration,
    counts: serde_json::Value,
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
    b.settle().await;
    eprintln!("scale --job: {n} devices provisioned in {provision:?}; connecting ...");
    let devices = b.devices.clone();
    let (clients, connect) = connect_all(b.mqtt, &devices, args.at_once, device_topics).await?;
    let answers = Arc::new(AtomicUsize::new(0));
    let mut answering = JoinSet::new();
    for (client, device) in clients.into_iter().zip(devices.iter()) {
        answering.spawn(answer(client, device.id.clone(), answers.clone()));
    }
    b.settle().await;
    eprintln!("scale --job: connected in {connect:?}; the job ...");
    let report = job(&b, n, &answers).await?;
    answering.abort_all();
    Ok(JobReport {
        provision,
        connect,
        ..report
    }
    .render())
}

/// Creates the job and follows it to `completed`.
async fn job(b: &Broker, n: usize, answers: &AtomicUsize) -> anyhow::Result<JobReport> {
    let mut http = Http::new(b.admin);
    let body = serde_json::json!({"name": "scale", "target": {"all": true},
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
                provision: Duration::ZERO,
                connect: Duration::ZERO,
                created: created.unwrap_or_default(),
                answered: answered.unwrap_or_else(|| t0.elapsed()),
                completed: t0.elapsed(),
                broker_cpu: broker::cpu_time(b.pid())?.saturating_sub(cpu_before),
                counts: job["counts"].clone(),
            });
        }
        if job["status"] != "running" || Instant::now() > deadline {
            bail!("the job did not complete: {job}");
        }
    }
}

impl JobReport {
    fn render(&self) -> String {
        let n = self.devices;
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let per_s = |d: Duration| format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9));
        let mut t = String::new();
        let _ = writeln!(t, "## scale --job: one job to {n} connected devices\n");
        let _ = writeln!(t, "| metric | fleetmq |\n|---|---:|");
        let rows = [
            (
                "every command created (`pending` 0, polled)",
                s(self.created),
            ),
            ("last device answered", s(self.answered)),
            ("job `completed` (polled every 250 ms)", s(self.completed)),
            ("commands/s, to the last answer", per_s(self.answered)),
            ("commands/s, to `completed`", per_s(self.completed)),
            (
                "broker CPU per command",
                format!(
                    "{:.0} µs",
                    self.broker_cpu.as_secs_f64() * 1e6 / n.max(1) as f64
                ),
            ),
        ];
        for (metric, value) in rows {
            let _ = writeln!(t, "| {metric} | {value} |");
        }
        let _ = writeln!(
            t,
            "\nfinal counts: {}\nprovisioning (bulk route): {:.2} s; connecting: {:.2} s",
            self.counts,
            self.provision.as_secs_f64(),
            self.connect.as_secs_f64()
        );
        t
    }
}
