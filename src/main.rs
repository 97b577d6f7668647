//! `fleetmq`: parse flags, load config, wire the crates together, run until a signal,
//! drain, flush, exit. All logic lives in the workspace crates; the admin commands
//! (`device`, `command`, `telemetry`, `events`, `publish`, `stats`, ...) are a client of
//! the admin API in `cli/`, and `subscribe` an MQTT client; `check` runs redb's
//! integrity check on a stopped broker's data file.

mod check;
mod cli;
mod config;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toml::Value;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An MQTT broker for fleets of edge devices, with the device logic built in.
#[derive(Debug, Parser)]
#[command(
    name = "fleetmq",
    version,
    about,
    after_help = "The admin commands' flags --url, --api-key, --ca, --json and --config may come \
                  before or after the command: `fleetmq --api-key K device list`.\n\
                  Exit codes of the admin commands: 0 done, 1 the API refused the request, \
                  2 usage, 3 cannot reach the API or the key was refused, \
                  4 `command send --wait` did not complete."
)]
struct Cli {
    /// Log format (the level comes from RUST_LOG, default `info,rumqttd=off`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "FLEETMQ_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (MQTT on TCP/WebSocket/TLS and the admin HTTP API).
    Serve(ServeArgs),
    /// Run redb's integrity check on the data file (the broker must be stopped)
    Check(check::CheckArgs),
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file; environment variables FLEETMQ_<SECTION>_<KEY> override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (one redb file and generated secrets).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT over TCP listen address ("" disables).
    #[arg(long, value_name = "ADDR")]
    mqtt_tcp: Option<String>,
    /// MQTT over WebSocket listen address ("" disables).
    #[arg(long, value_name = "ADDR")]
    mqtt_ws: Option<String>,
    /// Admin HTTP API listen address.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Teltonika trackers' TCP listen address, e.g. 0.0.0.0:5027 ("", the default, disables).
    #[arg(long, value_name = "ADDR")]
    teltonika_listen: Option<String>,
    /// Encrypt device payloads (SPEC §4) for every device.
    #[arg(long)]
    payload_encryption: bool,
    /// Let clients without credentials connect, with `security.anonymous_rules`.
    #[arg(long)]
    allow_anonymous: bool,
}

impl ServeArgs {
    fn flags(&self) -> Vec<(&'static str, Value)> {
        let mut flags = Vec::new();
        let mut string = |key, v: &Option<String>| {
            if let Some(v) = v {
                flags.push((key, Value::String(v.clone())));
            }
        };
        string("mqtt.tcp", &self.mqtt_tcp);
        string("mqtt.ws", &self.mqtt_ws);
        string("admin.listen", &self.admin_listen);
        string("teltonika.listen", &self.teltonika_listen);
        if let Some(dir) = &self.data_dir {
            flags.push(("data_dir", Value::String(dir.display().to_string())));
        }
        if self.payload_encryption {
            flags.push(("security.payload_encryption", Value::Boolean(true)));
        }
        if self.allow_anonymous {
            flags.push(("security.allow_anonymous", Value::Boolean(true)));
        }
        flags
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    // rumqttd's router logs every link at info and harmless races at error; fleetmq's own
    // link layer reports what matters. `RUST_LOG=info,rumqttd=warn` shows the router.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    // A log line that cannot be written is dropped. By default tracing-subscriber
    // reports a failed write with `eprintln!` to the same stderr, and when stderr is a
    // pipe whose reader is gone (SIGPIPE is ignored, so the write fails with EPIPE)
    // that `eprintln!` panics: in a connection task, in the listener, or in `serve`
    // as it logs "shutting down" before cancelling the shutdown token (issue 14).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The admin commands' connection flags (`cli::ConnArgs`; `--config` is also `serve`'s)
/// and whether each takes a value.
const CONN_FLAGS: [(&str, bool); 5] = [
    ("--url", true),
    ("--api-key", true),
    ("--ca", true),
    ("--json", false),
    ("--config", true),
];

/// Moves connection flags written before the command to just after it, where clap takes
/// them (`fleetmq --api-key K device list` → `fleetmq device --api-key K list`). Anything
/// else before the command stays where it is, for clap to take or refuse.
fn hoist_conn_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut it = args.into_iter();
    let mut out: Vec<std::ffi::OsString> = it.next().into_iter().collect();
    let mut moved = Vec::new();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy().into_owned();
        let name = text.split('=').next().unwrap_or_default();
        let conn = CONN_FLAGS.iter().find(|(flag, _)| *flag == name);
        match conn {
            Some((_, takes_value)) => {
                let value_follows = *takes_value && !text.contains('=');
                moved.push(arg);
                if value_follows {
                    moved.extend(it.next());
                }
            }
            None if text.starts_with('-') => {
                out.push(arg);
                // `--log-format text` keeps its value beside it.
                if text == "--log-format" {
                    out.extend(it.next());
                }
            }
            None => {
                out.push(arg);
                out.append(&mut moved);
                out.extend(it);
                return out;
            }
        }
    }
    out.append(&mut moved);
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(hoist_conn_flags(std::env::args_os().collect()));
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Admin(command) => return cli::run(command),
        Command::Check(args) => return check::run(args),
    };
    init_tracing(cli.log_format);
    return_freed_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // A panic out of `serve` must not skip the bounded shutdown below: unwinding would
    // drop the runtime, and dropping a runtime waits for its blocking threads without
    // a limit. The panic hook has already reported the panic.
    let served = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(serve(args))));
    let code = match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            report(format_args!("{e:#}"));
            ExitCode::FAILURE
        }
        Err(_panic) => ExitCode::FAILURE,
    };
    // Every task has been told to stop (`serve` cancels the shutdown token however it
    // ends) and, on a clean stop, has stopped. Whatever still runs on a blocking thread
    // gets a moment, then the process exits anyway: a redb commit is atomic, so a
    // thread cut off loses at most the write it had not finished.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

/// How long the runtime's blocking threads may take to finish once `serve` returned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(3);

/// How long an idle blocking-pool thread waits for work before it exits (tokio's default
/// is 10 s). A burst of store calls (a job to every device) grows the pool to ~150
/// threads, each with a jemalloc thread cache of freed objects (52 MB in all at 19,000
/// devices); they reach the arenas only when the thread exits, so the sooner the better
/// (docs/perf-log/session-14.md, "What stays after a job").
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Turns on jemalloc's background threads, which purge freed pages on time. Without
/// them, pages are purged only as a side effect of later allocations, so what a burst
/// freed stays resident for as long as the broker is idle (26 MB, 1.4 KB per device,
/// after a job to 19,000 devices). Not fatal if refused: the broker only keeps more.
fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("jemalloc background threads not started: {e}");
    }
}

/// Writes `message` to stderr. Unlike `eprintln!` it does not panic when stderr is
/// gone (a closed pipe); the message is lost then, with nothing better to do.
fn report(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "fleetmq: {message}");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = config::load(args.config.as_deref(), std::env::vars(), args.flags())?;
    let data_dir = config.data_dir.clone();
    let store = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || fleetmq_storage::Store::open(&dir)).await??
    };
    let shutdown = CancellationToken::new();
    // However `serve` ends (an error after the services started, a panic, or the
    // signal below), every task it started is told to stop. The telemetry writer, on a
    // thread of its own, ends on nothing else: left running it kept the process alive.
    let _stop_on_exit = shutdown.clone().drop_guard();
    let tracker = TaskTracker::new();

    // Installed before anything can connect: a SIGTERM that comes before `serve` waits
    // for it (e.g. as soon as /health answers) is a clean stop, not the default action.
    let stop = stop_signal().context("install the SIGTERM/SIGINT handlers")?;
    let listeners = fleetmq_broker::Listeners::bind(&config.broker).await?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("bind admin API on {}", config.admin.listen))?;
    tracing::info!(
        mqtt_tcp = ?listeners.tcp_addr(),
        mqtt_ws = ?listeners.ws_addr(),
        mqtt_tls = ?listeners.tls_addr(),
        mqtt_listeners = ?listeners.extra_addrs(),
        teltonika = ?listeners.teltonika_addr(),
        admin = %admin_listener.local_addr()?,
        data_dir = %data_dir.display(),
        "fleetmq listening"
    );
    let broker = fleetmq_broker::start(
        config.broker,
        listeners,
        store.clone(),
        shutdown.clone(),
        &tracker,
    )
    .await?;
    let key =
        fleetmq_web::ensure_admin_key(&store, &data_dir, config.admin.api_key.as_deref()).await?;
    let state = fleetmq_web::AppState::new(store.clone(), broker, key, config.admin).load_tls()?;
    tracker.spawn(fleetmq_web::serve(admin_listener, state, shutdown.clone()));

    stop.await;
    tracing::info!("shutting down: no new connections, closing clients");
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 5 s");
    }
    // Every redb write commits durably; dropping the last handle closes the file cleanly.
    drop(store);
    tracing::info!("fleetmq stopped");
    Ok(())
}

/// SIGINT or SIGTERM. The handlers are installed by this call, not when the returned
/// future is first polled: a signal that arrives in between is kept for it, instead of
/// ending the process by the signal's default action (no drain, no exit 0).
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks (argument ids, globals, defaults) for every subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Issue 18: `fleetmq --api-key K device list` was refused.
    #[test]
    fn connection_flags_may_come_before_the_command() {
        use clap::Parser;
        let args =
            |line: &str| -> Vec<std::ffi::OsString> { line.split(' ').map(Into::into).collect() };
        let hoisted = |line: &str| super::hoist_conn_flags(args(line));
        assert_eq!(
            hoisted("fleetmq --api-key K --json --url=http://h:1 device list --limit 5"),
            args("fleetmq device --api-key K --json --url=http://h:1 list --limit 5")
        );
        assert_eq!(
            hoisted("fleetmq --log-format json --config f.toml serve"),
            args("fleetmq --log-format json serve --config f.toml")
        );
        let unchanged = "fleetmq device --api-key K list";
        assert_eq!(hoisted(unchanged), args(unchanged));
        let cli = super::Cli::try_parse_from(hoisted("fleetmq --api-key K --json device list"))
            .expect("parses");
        let super::Command::Admin(crate::cli::AdminCommand::Device { conn, .. }) = cli.command
        else {
            panic!("not `device`");
        };
        assert_eq!(conn.api_key.as_deref(), Some("K"));
        assert!(conn.json);
        // An admin flag before `serve` is still an error, not silently ignored.
        assert!(super::Cli::try_parse_from(hoisted("fleetmq --api-key K serve")).is_err());
    }

    /// Each listener flag sets its config key.
    #[test]
    fn listener_flags_set_their_keys() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "fleetmq",
            "serve",
            "--mqtt-tcp",
            "127.0.0.1:1",
            "--teltonika-listen",
            "127.0.0.1:5027",
        ])
        .expect("parses");
        let super::Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let flags = args.flags();
        let value = |key: &str| {
            flags
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            value("mqtt.tcp"),
            Some(toml::Value::String("127.0.0.1:1".into()))
        );
        let telt = value("teltonika.listen");
        assert_eq!(telt, Some(toml::Value::String("127.0.0.1:5027".into())));
        assert_eq!(value("admin.listen"), None);
    }
}
