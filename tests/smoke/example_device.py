#!/usr/bin/env python3
"""Runs the documented examples against the real fleetmq binary: examples/python/device.py
as an encrypted device (SPEC section 4 envelope), commands sent through the admin API and
through the `fleetmq command send` CLI, telemetry and config checked through the API, and
every webhook delivery checked with the signature verification of
examples/python/webhook_receiver.py (and examples/node/verify_webhook.js when node is
installed).

Usage: example_device.py PATH_TO_FLEETMQ_BINARY
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))
from webhook_receiver import verify_signature  # noqa: E402  (the documented function)

API_KEY = "example-device-admin-key-0123456789"
WEBHOOK_SECRET = "example-webhook-secret"
DEVICE = "py-device-1"
FAILURES = []
CHECKS = 0


def check(cond, what):
    global CHECKS
    CHECKS += 1
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(cond, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    return cond()


def api(admin, method, path, body=None):
    req = urllib.request.Request(f"http://{admin}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"x-api-key": API_KEY, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Deliveries:
    """A webhook endpoint that keeps every delivery as received (raw body, signature)."""

    def __init__(self):
        self.items = []
        self.lock = threading.Lock()
        deliveries = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with deliveries.lock:
                    deliveries.items.append((body, self.headers.get("X-Fleetmq-Signature", "")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, kind):
        with self.lock:
            return [(b, s) for b, s in self.items if json.loads(b).get("type") == kind]


def main():
    binary = sys.argv[1]
    tcp, admin_port = free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    hooks = Deliveries()
    work = tempfile.mkdtemp(prefix="fleetmq-example-")
    config = os.path.join(work, "fleetmq.toml")
    with open(config, "w") as f:
        f.write(f"""data_dir = "{work}/data"
[mqtt]
tcp = "127.0.0.1:{tcp}"
ws = ""
[admin]
listen = "{admin}"
api_key = "{API_KEY}"
[[webhooks]]
url = "http://127.0.0.1:{hooks.port}/hooks"
secret = "{WEBHOOK_SECRET}"
events = ["command.*", "device.*"]
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETMQ_")}
    serve = subprocess.Popen([binary, "serve", "--config", config], env=dict(env, RUST_LOG="warn"))
    device = None
    try:
        if not wait(lambda: api_up(admin, serve), 30):
            raise SystemExit("fleetmq did not come up")
        status, body = api(admin, "POST", "/api/v1/devices", {"id": DEVICE, "encrypted": True})
        check(status == 201 and "key" in body, f"provision an encrypted device -> {status}")
        password, key = body["credentials"]["password"], body["key"]

        device = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "python", "device.py"),
                                   "--id", DEVICE, "--port", str(tcp), "--telemetry-every", "0.3",
                                   "--key-generation", str(key["generation"])],
                                  env=dict(env, FLEETMQ_DEVICE_PASSWORD=password, FLEETMQ_DEVICE_KEY=key["base64"]))
        online = wait(lambda: api(admin, "GET", f"/api/v1/devices/{DEVICE}")[1].get("online"))
        check(online, "device.py connects and is online")

        status, record = api(admin, "POST", f"/api/v1/devices/{DEVICE}/commands?wait_ms=15000",
                             {"type": "RELOAD", "params": {"n": 1}, "metadata": {"job_id": "ci-1"}})
        check(status == 200 and record.get("status") == "completed",
              f"RELOAD completes: {status} {record.get('status')} {record.get('error')}")
        check(record.get("result", {}).get("params") == {"n": 1}, f"the device's result comes back: {record.get('result')}")
        status, record = api(admin, "POST", f"/api/v1/devices/{DEVICE}/commands?wait_ms=15000", {"type": "FAIL"})
        check(record.get("status") == "failed" and record.get("error") == "asked to fail",
              f"a failing answer is recorded: {record.get('status')} {record.get('error')}")

        cli = subprocess.run([binary, "command", "send", DEVICE, "PING", "--wait", "15", "--json"],
                             env=dict(env, FLEETMQ_ADMIN_URL=f"http://{admin}", FLEETMQ_API_KEY=API_KEY),
                             capture_output=True, text=True, timeout=60)
        check(cli.returncode == 0 and json.loads(cli.stdout or "{}").get("status") == "completed",
              f"fleetmq command send --wait completes: rc {cli.returncode} {cli.stderr.strip()}")

        latest = wait(lambda: api(admin, "GET", f"/api/v1/devices/{DEVICE}/telemetry/latest")[1].get("values", {}).get("cpu"))
        check(latest is not None, f"telemetry was decrypted and stored: {latest}")
        status, page = api(admin, "GET", f"/api/v1/devices/{DEVICE}/telemetry?limit=5")
        check(status == 200 and len(page.get("items", [])) > 0 and "uptime" in page["items"][0]["values"],
              f"telemetry points are listed: {status}")

        status, view = api(admin, "PUT", f"/api/v1/devices/{DEVICE}/config", {"telemetry_every_s": 0.2})
        check(status == 200, f"config stored -> {status}")
        reported = wait(lambda: api(admin, "GET", f"/api/v1/devices/{DEVICE}/config")[1].get("reported_version") == view.get("version"))
        check(reported, "the device opened its sealed config and reported its version")

        status, stats = api(admin, "GET", "/api/v1/stats")
        check(status == 200, "stats")
        failed = find_key(stats, "decrypt_failed")
        check(failed == [0], f"no payload failed to decrypt: decrypt_failed = {failed}")

        # Webhooks: every delivery verifies with the documented function, and only as sent.
        completed = wait(lambda: [d for d in hooks.of_type("command.completed")
                                  if json.loads(d[0])["data"].get("metadata") == {"job_id": "ci-1"}])
        check(bool(completed), "a command.completed webhook carries the command's metadata")
        with hooks.lock:
            everything = list(hooks.items)
        check(everything and all(verify_signature(WEBHOOK_SECRET.encode(), b, s) for b, s in everything),
              f"every one of {len(everything)} deliveries verifies (Python)")
        if completed:
            body, sig = completed[0]
            check(not verify_signature(WEBHOOK_SECRET.encode(), body + b" ", sig), "an altered body does not verify")
            check(not verify_signature(b"wrong-secret", body, sig), "a wrong secret does not verify")
            if shutil.which("node"):
                path = os.path.join(work, "delivery.json")
                with open(path, "wb") as f:
                    f.write(body)
                node = subprocess.run(["node", os.path.join(ROOT, "examples", "node", "verify_webhook.js"),
                                       WEBHOOK_SECRET, path, sig], capture_output=True, text=True, timeout=30)
                check(node.returncode == 0, f"the delivery verifies (Node): {node.stdout.strip()} {node.stderr.strip()}")

        device.send_signal(signal.SIGTERM)
        check(device.wait(timeout=15) == 0, "device.py stops cleanly on SIGTERM")
        offline = wait(lambda: api(admin, "GET", f"/api/v1/devices/{DEVICE}")[1].get("online") is False)
        check(offline, "the device is offline after it left")
        status_payload = api(admin, "GET", f"/api/v1/devices/{DEVICE}")[1].get("reported_status") or {}
        check(status_payload.get("state") == "offline", f"its last (sealed) status was read: {status_payload}")
    finally:
        if device and device.poll() is None:
            device.kill()
        serve.terminate()
        try:
            rc = serve.wait(timeout=10)
        except subprocess.TimeoutExpired:
            serve.kill()
            rc = None
        check(rc == 0, f"fleetmq exits 0 on SIGTERM (got {rc})")
        hooks.server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"examples: {CHECKS - len(FAILURES)} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


def find_key(obj, key):
    """Every value stored under `key` anywhere in a JSON document."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += [v] if k == key else find_key(v, key)
    elif isinstance(obj, list):
        for v in obj:
            found += find_key(v, key)
    return found


def api_up(admin, proc):
    if proc.poll() is not None:
        raise SystemExit(f"fleetmq exited early with {proc.returncode}")
    try:
        with urllib.request.urlopen(f"http://{admin}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
