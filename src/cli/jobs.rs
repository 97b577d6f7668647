//! `fleetmq job ...`: create, list, show and cancel jobs (SPEC §12).

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Map, Value};

use super::client::{enc, with_query, Admin, Reply, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::{self, cell, print_fields};

#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// Send one command to a set of devices, paced, with an abort rule
    Create(CreateArgs),
    /// List every job, newest first
    List,
    /// Show one job with its commands counted by state (--status: list its commands)
    Show {
        #[arg(value_name = "JOB_ID")]
        job_id: String,
        /// List the job's commands in this state (failed, queued, ...)
        #[arg(long)]
        status: Option<String>,
    },
    /// Cancel a running job: no further commands, its open ones cancelled
    Cancel {
        #[arg(value_name = "JOB_ID")]
        job_id: String,
    },
}

/// The arguments of `job create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the job
    name: String,
    /// The command type, e.g. OTA
    #[arg(value_name = "TYPE")]
    kind: String,
    /// Target: these devices (repeat, or comma-separated)
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["label", "all"])]
    device: Vec<String>,
    /// Target: the devices with this label, KEY:VALUE
    #[arg(long, value_name = "KEY:VALUE", conflicts_with = "all")]
    label: Option<String>,
    /// Target: every device
    #[arg(long)]
    all: bool,
    /// Parameters, a JSON object
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// Metadata, a JSON object (`job_id` is added)
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Answer timeout per send, seconds [server default: commands.timeout_s]
    #[arg(long, value_name = "SECS")]
    timeout_s: Option<u64>,
    /// At most N commands created per minute
    #[arg(long, value_name = "N")]
    per_minute: Option<u32>,
    /// At most N of the job's commands not terminal at once
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// Abort once failed + expired reach PCT % of the terminal commands...
    #[arg(long, value_name = "PCT")]
    abort_failed_pct: Option<f64>,
    /// ... and at least N commands are terminal
    #[arg(long, value_name = "N", requires = "abort_failed_pct")]
    abort_min_done: Option<u32>,
}

/// The fields `job show` prints, in order.
const JOB_FIELDS: &[&str] = &[
    "job_id",
    "name",
    "status",
    "target_count",
    "counts",
    "command",
    "rollout",
    "abort",
    "created_at",
    "finished_at",
];

fn json_object(flag: &str, text: &str) -> Result<Value, CliError> {
    match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(CliError::Usage(format!("--{flag}: must be a JSON object"))),
        Err(e) => Err(CliError::Usage(format!("--{flag}: not JSON: {e}"))),
    }
}

impl CreateArgs {
    /// The JSON body of `POST /api/v1/jobs`.
    fn body(&self) -> Result<Value, CliError> {
        let target = match (&self.device[..], &self.label, self.all) {
            ([_, ..], None, false) => json!({ "devices": self.device }),
            ([], Some(label), false) => json!({ "label": label }),
            ([], None, true) => json!({ "all": true }),
            _ => {
                return Err(CliError::Usage(
                    "give one target: --device ID[,ID...], --label KEY:VALUE or --all".into(),
                ))
            }
        };
        let mut command = Map::new();
        command.insert("type".into(), json!(self.kind));
        if let Some(p) = &self.params {
            command.insert("params".into(), json_object("params", p)?);
        }
        if let Some(m) = &self.metadata {
            command.insert("metadata".into(), json_object("metadata", m)?);
        }
        if let Some(t) = self.timeout_s {
            command.insert("timeout_s".into(), json!(t));
        }
        let mut body = json!({ "name": self.name, "target": target, "command": command });
        if self.per_minute.is_some() || self.max_in_flight.is_some() {
            body["rollout"] =
                json!({ "per_minute": self.per_minute, "max_in_flight": self.max_in_flight });
        }
        if let Some(pct) = self.abort_failed_pct {
            body["abort"] =
                json!({ "failed_pct": pct, "min_done": self.abort_min_done.unwrap_or(0) });
        }
        Ok(body)
    }
}

/// Runs a `job` subcommand.
pub async fn run(admin: &Admin, json: bool, action: JobAction) -> Result<(), CliError> {
    let reply = match action {
        JobAction::Create(args) => {
            let body =
                serde_json::to_vec(&args.body()?).map_err(|e| CliError::Usage(e.to_string()))?;
            call(admin, Method::POST, "/api/v1/jobs".into(), Some(body)).await?
        }
        JobAction::List => {
            let reply = call(admin, Method::GET, "/api/v1/jobs".into(), None).await?;
            return list(json, &reply);
        }
        JobAction::Show {
            job_id,
            status: Some(status),
        } => {
            let path = with_query(
                &format!("{}/commands", job_path(&job_id)),
                &[format!("status={}", enc(&status)), "limit=1000".into()],
            );
            let reply = call(admin, Method::GET, path, None).await?;
            return commands(json, &reply);
        }
        JobAction::Show {
            job_id,
            status: None,
        } => call(admin, Method::GET, job_path(&job_id), None).await?,
        JobAction::Cancel { job_id } => {
            call(admin, Method::DELETE, job_path(&job_id), None).await?
        }
    };
    if json {
        output::print_raw(&reply);
    } else {
        let mut job = reply.json()?;
        // `pending 1 · queued 2` reads better than the counts object.
        job["counts"] = Value::String(counts(&job));
        print_fields(&job, JOB_FIELDS);
    }
    Ok(())
}

async fn call(
    admin: &Admin,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<Reply, CliError> {
    admin.call(method, &path, body, &[], REQUEST_TIMEOUT).await
}

fn job_path(job_id: &str) -> String {
    format!("/api/v1/jobs/{}", enc(job_id))
}

/// `pending 3 · queued 1 · failed 2`: the non-zero counts of a job.
fn counts(job: &Value) -> String {
    let Some(counts) = job.get("counts").and_then(Value::as_object) else {
        return String::new();
    };
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    parts.join(" · ")
}

fn list(json: bool, reply: &Reply) -> Result<(), CliError> {
    let headers = ["JOB ID", "NAME", "STATUS", "TARGETS", "COUNTS", "CREATED"];
    output::print_page(json, reply, &headers, |j| {
        vec![
            cell(j.get("job_id")),
            cell(j.get("name")),
            cell(j.get("status")),
            cell(j.get("target_count")),
            counts(j),
            cell(j.get("created_at")),
        ]
    })?;
    Ok(())
}

fn commands(json: bool, reply: &Reply) -> Result<(), CliError> {
    let headers = ["DEVICE", "COMMAND ID", "STATUS", "ERROR", "ENDED"];
    output::print_page(json, reply, &headers, |c| {
        vec![
            cell(c.get("device_id")),
            cell(c.get("command_id")),
            cell(c.get("status")),
            cell(c.get("error")),
            cell(c.get("completed_at")),
        ]
    })?;
    if !json {
        output::next_page_hint(&reply.json()?);
    }
    Ok(())
}
