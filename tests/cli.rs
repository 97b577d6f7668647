//! The `fleetmq` binary as a user runs it (SPEC §1): flags and help, config errors that
//! name the culprit, and a real `serve` that generates its admin key, answers on the admin
//! API, exits 0 on SIGTERM/SIGINT and keeps the key across a restart.

use crate::support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use support::{free_ports, BIN};

/// How long a command that should fail at once may take.
const QUICK: Duration = Duration::from_secs(10);
/// How long `serve` may take to answer on the admin port.
const STARTUP: Duration = Duration::from_secs(30);
/// SPEC §1: exit 0 "within a few seconds" of SIGTERM.
const SHUTDOWN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(25);

/// `fleetmq` with a clean environment: no `FLEETMQ_*` variables of the caller leak in.
fn fleetmq() -> Command {
    let mut cmd = Command::new(BIN);
    for name in support::leaking_vars() {
        cmd.env_remove(name);
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

/// Waits for `child` at most `limit`; kills it and panics past that.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Runs a command that should end by itself; its output goes to files so a chatty child
/// can never block on a full pipe.
fn run(mut cmd: Command, dir: &Path, what: &str) -> Output {
    let (out_path, err_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let mut child = cmd
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn fleetmq");
    let status = wait_bounded(&mut child, QUICK, what);
    Output {
        status,
        stdout: std::fs::read(&out_path).expect("read stdout"),
        stderr: std::fs::read(&err_path).expect("read stderr"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Listener flags on free loopback ports, so a test never touches the SPEC defaults.
fn loopback_flags(cmd: &mut Command) -> SocketAddr {
    let ports = free_ports(3);
    cmd.arg("--mqtt-tcp")
        .arg(ports[0].to_string())
        .arg("--mqtt-ws")
        .arg(ports[1].to_string())
        .arg("--admin-listen")
        .arg(ports[2].to_string());
    ports[2]
}

#[test]
fn version_and_help_name_the_binary_and_its_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = fleetmq();
    cmd.arg("--version");
    let out = run(cmd, dir.path(), "fleetmq --version");
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("fleetmq {}", env!("CARGO_PKG_VERSION"))
    );

    let mut cmd = fleetmq();
    cmd.arg("--help");
    let out = run(cmd, dir.path(), "fleetmq --help");
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    for needle in ["serve", "--log-format", "--help", "--version"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }

    let mut cmd = fleetmq();
    cmd.args(["serve", "--help"]);
    let out = run(cmd, dir.path(), "fleetmq serve --help");
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--data-dir",
        "--mqtt-tcp",
        "--mqtt-ws",
        "--admin-listen",
        "--payload-encryption",
        "--allow-anonymous",
        "--log-format",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = fleetmq();
    cmd.args(["serve", "--no-such-flag"]);
    let out = run(cmd, dir.path(), "fleetmq serve --no-such-flag");
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("--no-such-flag"), "{out:?}");
}

/// Runs `cmd` (`serve` and its arguments) on free loopback ports; it must refuse to
/// start. Returns its stderr.
fn serve_refuses(mut cmd: Command, dir: &Path, what: &str) -> String {
    cmd.arg("--data-dir").arg(dir.join("data"));
    loopback_flags(&mut cmd);
    let out = run(cmd, dir, what);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{what}: started anyway: {stderr}");
    assert_ne!(
        out.status.code(),
        None,
        "{what}: killed by a signal: {stderr}"
    );
    stderr
}

#[test]
fn unknown_config_key_and_env_var_are_named_and_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\ntcpp = \"x\"\n").expect("write bad.toml");
    let mut cmd = fleetmq();
    cmd.args(["serve", "--config"]).arg(&bad);
    let stderr = serve_refuses(cmd, dir.path(), "serve with an unknown config key");
    assert!(
        stderr.contains("tcpp"),
        "stderr should name `tcpp`: {stderr}"
    );

    let mut cmd = fleetmq();
    cmd.arg("serve").env("FLEETMQ_MQTT_NOPE", "1");
    let stderr = serve_refuses(cmd, dir.path(), "serve with FLEETMQ_MQTT_NOPE");
    assert!(
        stderr.contains("FLEETMQ_MQTT_NOPE"),
        "stderr should name FLEETMQ_MQTT_NOPE: {stderr}"
    );

    let mut cmd = fleetmq();
    cmd.arg("serve").env("FLEETMQ_MQTT_MAX_PAYLOAD", "0");
    let stderr = serve_refuses(cmd, dir.path(), "serve with max_payload 0");
    assert!(stderr.contains("mqtt.max_payload"), "{stderr}");

    let mut cmd = fleetmq();
    cmd.args(["serve", "--config"])
        .arg(dir.path().join("missing.toml"));
    let stderr = serve_refuses(cmd, dir.path(), "serve with a missing config file");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http_get(addr: SocketAddr, path: &str, api_key: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = api_key {
        request.push_str(&format!("x-api-key: {key}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = text(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A running `fleetmq serve`; killed if a test panics before stopping it.
struct Server {
    child: Child,
    admin: SocketAddr,
    stderr: std::path::PathBuf,
}

impl Server {
    /// Logging to the file `log`.
    fn start(data_dir: &Path, log: &Path) -> Server {
        let stderr = File::create(log).expect("log file");
        Server::start_with(data_dir, Stdio::null(), stderr.into(), log)
    }

    /// With stdout and stderr as given; [`Server::log`] reads `log`.
    fn start_with(data_dir: &Path, stdout: Stdio, stderr: Stdio, log: &Path) -> Server {
        let mut cmd = fleetmq();
        cmd.arg("serve").arg("--data-dir").arg(data_dir);
        let admin = loopback_flags(&mut cmd);
        let child = cmd
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn fleetmq serve");
        let mut server = Server {
            child,
            admin,
            stderr: log.to_owned(),
        };
        server.wait_healthy();
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls `GET /health` until it answers 200.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("fleetmq serve exited early ({status}):\n{}", self.log());
            }
            if let Ok((200, _)) = http_get(self.admin, "/health", None) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "admin API not up within {STARTUP:?}:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Sends `signal` (via kill(1)) and returns the exit status.
    fn stop(&mut self, signal: &str) -> ExitStatus {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
        wait_bounded(&mut self.child, SHUTDOWN, "fleetmq serve after a signal")
    }
}

impl Drop for Server {
    /// Harmless after [`Server::stop`]: the child has been reaped.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
#[test]
fn serve_generates_an_admin_key_stops_on_sigterm_and_keeps_the_key() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let key_file = data.join("admin.key");

    let mut server = Server::start(&data, &dir.path().join("first.log"));
    // The key file is written before the admin API starts serving.
    let mode = std::fs::metadata(&key_file)
        .expect("admin.key exists once the admin API answers")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.key mode is {:o}", mode & 0o777);
    let key = std::fs::read_to_string(&key_file).expect("read admin.key");
    let key = key.trim().to_owned();
    assert!(key.len() >= 32, "a short admin key: {key:?}");
    assert!(
        server.log().contains("admin.key"),
        "the log should say where the key is:\n{}",
        server.log()
    );

    let (status, body) = http_get(server.admin, "/health", None).expect("GET /health");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(server.admin, "/api/v1/stats", Some(&key)).expect("GET stats");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("stats is JSON");
    assert!(stats.is_object(), "{stats}");
    let (status, _) = http_get(server.admin, "/api/v1/stats", None).expect("GET stats");
    assert_eq!(status, 401, "no key");
    let (status, _) =
        http_get(server.admin, "/api/v1/stats", Some("not-the-key")).expect("GET stats");
    assert_eq!(status, 401, "wrong key");

    let first_log = server.log();
    let exit = server.stop("TERM");
    assert_eq!(
        exit.code(),
        Some(0),
        "exit after SIGTERM: {exit}\n{first_log}"
    );

    // Only the key's hash is stored: with the file gone, the same key still works and no
    // new key is generated.
    std::fs::remove_file(&key_file).expect("remove admin.key");
    let mut server = Server::start(&data, &dir.path().join("second.log"));
    let (status, body) = http_get(server.admin, "/api/v1/stats", Some(&key)).expect("GET stats");
    assert_eq!(status, 200, "the first key after a restart: {body}");
    assert!(!key_file.exists(), "a new admin.key was written on restart");
    assert!(
        !server.log().contains("generated an admin API key"),
        "{}",
        server.log()
    );
    let second_log = server.log();
    let exit = server.stop("INT");
    assert_eq!(
        exit.code(),
        Some(0),
        "exit after SIGINT: {exit}\n{second_log}"
    );
}

/// Issue 14: a log sink that goes away (a pipe whose reader died, journald restarted)
/// must not stop a shutdown. With stdout and stderr pipes whose read ends are closed
/// once it is up, every log line fails with EPIPE; SIGTERM must still end `serve` with
/// exit 0 within a few seconds, as with a log file.
#[cfg(unix)]
#[test]
fn serve_stops_on_sigterm_when_its_log_pipe_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Nothing is written there: the log goes to the pipes.
    let no_log = dir.path().join("no.log");
    let mut server = Server::start_with(&data, Stdio::piped(), Stdio::piped(), &no_log);
    // `head -3` has exited: the read ends are closed.
    drop(server.child.stdout.take().expect("stdout pipe"));
    drop(server.child.stderr.take().expect("stderr pipe"));
    let (status, body) = http_get(server.admin, "/health", None).expect("GET /health");
    assert_eq!(status, 200, "still serving with its log pipe gone: {body}");

    let exit = server.stop("TERM");
    assert_eq!(exit.code(), Some(0), "exit after SIGTERM: {exit}");
    // The store was closed cleanly: the next start finds the admin key it generated.
    let mut server = Server::start(&data, &dir.path().join("second.log"));
    assert!(
        !server.log().contains("generated an admin API key"),
        "{}",
        server.log()
    );
    let exit = server.stop("TERM");
    assert_eq!(exit.code(), Some(0), "exit after SIGTERM: {exit}");
}

/// A `serve` that fails after the broker and its services started (here: the admin key
/// file cannot be written) exits with an error at once: the services it started end
/// on the shutdown token instead of keeping the process alive.
#[test]
fn serve_that_fails_after_starting_exits_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The key is written through `admin.key.tmp`; a directory there refuses it.
    std::fs::create_dir_all(dir.path().join("data").join("admin.key.tmp")).expect("mkdir");
    let mut cmd = fleetmq();
    cmd.arg("serve");
    let stderr = serve_refuses(cmd, dir.path(), "serve that cannot write its admin key");
    assert!(stderr.contains("admin.key"), "{stderr}");
}
