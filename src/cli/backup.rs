//! `fleetmq backup PATH`: a consistent copy of the running broker's data
//! (`POST /api/v1/backup`), written to PATH and checked with redb's integrity check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::client::Admin;
use super::error::CliError;
use super::output::outln;

/// How long the broker may take to write the copy before the answer begins.
const COPY_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the copy (a redb file; restore it as <data_dir>/fleetmq.redb)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Replace PATH if it exists
    #[arg(long)]
    pub force: bool,
}

/// Downloads the copy to `PATH.partial`, checks it and renames it to PATH.
pub async fn run(admin: &Admin, json: bool, args: BackupArgs) -> Result<(), CliError> {
    if args.path.exists() && !args.force {
        return Err(CliError::Usage(format!(
            "{} exists; give --force to replace it",
            args.path.display()
        )));
    }
    let partial = partial_path(&args.path);
    let io = |what: &str, p: &Path, e: std::io::Error| {
        CliError::Usage(format!("cannot {what} {}: {e}", p.display()))
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| io("create", &partial, e))?;
    let fetched = admin.download("/api/v1/backup", &mut file, COPY_WAIT).await;
    drop(file);
    let checked = match fetched {
        Ok(headers) => verify(&partial).await.map(|()| headers),
        Err(e) => Err(e),
    };
    let headers = match checked {
        Ok(headers) => headers,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&partial, &args.path)
        .await
        .map_err(|e| io("rename the download to", &args.path, e))?;
    let number = |name: &str| {
        (headers.get(name))
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or_default()
    };
    let bytes = std::fs::metadata(&args.path).map(|m| m.len()).unwrap_or(0);
    let (tables, entries) = (number("x-backup-tables"), number("x-backup-entries"));
    if json {
        let doc = json!({"path": args.path, "bytes": bytes, "tables": tables, "entries": entries});
        outln!("{doc}");
    } else {
        outln!(
            "backup written to {} ({bytes} bytes, {tables} tables, {entries} entries)",
            args.path.display()
        );
    }
    Ok(())
}

/// `PATH.partial`, beside PATH so the final rename stays on one file system.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// redb's integrity check on the downloaded file.
async fn verify(path: &Path) -> Result<(), CliError> {
    let owned = path.to_owned();
    let checked = tokio::task::spawn_blocking(move || fleetmq_storage::check_file(&owned))
        .await
        .map_err(|e| CliError::Protocol(format!("checking the copy failed: {e}")))?;
    match checked {
        Ok(_) => Ok(()),
        Err(e) => Err(CliError::Protocol(format!(
            "the copy does not pass redb's integrity check: {e}"
        ))),
    }
}
