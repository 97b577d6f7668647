//! `fleetmq check`: redb's integrity check on the data file of a stopped broker.
//!
//! Exit codes: 0 the file is sound (or redb repaired it, which is said), 1 the file is
//! damaged, 2 usage (bad config, no data file), 3 the file is in use (a running broker
//! holds its lock: stop it, or take a `fleetmq backup` instead).

use std::path::PathBuf;
use std::process::ExitCode;

use fleetmq_storage::{check_file, Integrity, OpenError, DB_FILE_NAME};
use toml::Value;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The config file `serve` uses; read only to find the data directory
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory [default: `data_dir` from the config]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Exit code: the file is damaged.
const DAMAGED: u8 = 1;
/// Exit code: bad config, or no data file where it should be.
const USAGE: u8 = 2;
/// Exit code: the file is open in another process.
const IN_USE: u8 = 3;

/// Runs the check and prints the verdict; returns the exit code.
pub fn run(args: CheckArgs) -> ExitCode {
    let flags = match &args.data_dir {
        Some(dir) => vec![("data_dir", Value::String(dir.display().to_string()))],
        None => Vec::new(),
    };
    let config = match crate::config::load(args.config.as_deref(), std::env::vars(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(USAGE);
        }
    };
    let path = config.data_dir.join(DB_FILE_NAME);
    if !path.is_file() {
        eprintln!(
            "error: no database at {}; give --data-dir or --config",
            path.display()
        );
        return ExitCode::from(USAGE);
    }
    // redb asserts on some damaged files; `check_file` turns that into an error with
    // advice, so the panic's own report (and backtrace) would only be noise here. This
    // process runs nothing else meanwhile.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let checked = check_file(&path);
    std::panic::set_hook(hook);
    match checked {
        Ok(Integrity::Clean) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Ok(Integrity::Repaired) => {
            println!(
                "{}: inconsistencies found and repaired by redb; the file is usable",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ OpenError::InUse { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(IN_USE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(DAMAGED)
        }
    }
}
