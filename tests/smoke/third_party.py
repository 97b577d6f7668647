#!/usr/bin/env python3
"""Third-party client smoke test: a real fleetmq binary, provisioned through its admin
API, driven by paho-mqtt (3.1.1 and 5, TCP and WebSocket) and Debian's mosquitto_pub /
mosquitto_sub. Devices publish and subscribe within their ACL and are refused outside it.

Usage: third_party.py PATH_TO_FLEETMQ_BINARY
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import paho.mqtt.client as mqtt

API_KEY = "smoke-test-admin-key-0123456789"
FAILURES = []
CHECKS = 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(cond, what):
    global CHECKS
    CHECKS += 1
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def api(admin, method, path, body=None):
    req = urllib.request.Request(f"http://{admin}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"x-api-key": API_KEY, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"fleetmq exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


class Client:
    """A paho client that records what it receives and every SUBACK/PUBACK code."""

    def __init__(self, client_id, user, password, port, transport="tcp", v5=False):
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        self.c.username_pw_set(user, password)
        self.messages, self.subacks, self.pubacks, self.connack = [], [], [], None
        self.c.on_connect = lambda c, u, f, rc, p=None: setattr(self, "connack", rc)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p=None: self.subacks.append([int(getattr(r, "value", r)) for r in rcs])
        self.c.on_publish = lambda c, u, mid, rc, p=None: self.pubacks.append(int(getattr(rc, "value", rc)))
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        deadline = time.time() + 5
        while self.connack is None and time.time() < deadline:
            time.sleep(0.02)

    def ok(self):
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic, qos=1):
        n = len(self.subacks)
        self.c.subscribe(topic, qos)
        wait(lambda: len(self.subacks) > n)
        return self.subacks[-1] if len(self.subacks) > n else None

    def publish(self, topic, payload, qos=1):
        self.c.publish(topic, payload, qos).wait_for_publish(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def wait(cond, timeout=3.0):
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.02)
    return cond()


def mosquitto(args, timeout=5):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def main():
    binary = sys.argv[1]
    tcp, ws, admin_port = free_port(), free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    data = tempfile.mkdtemp(prefix="fleetmq-smoke-")
    env = dict(os.environ, FLEETMQ_ADMIN_API_KEY=API_KEY, RUST_LOG="warn")
    proc = subprocess.Popen([binary, "serve", "--data-dir", data, "--mqtt-tcp", f"127.0.0.1:{tcp}",
                             "--mqtt-ws", f"127.0.0.1:{ws}", "--admin-listen", admin], env=env)
    try:
        for p in (tcp, ws, admin_port):
            wait_port(p, proc)
        status, body = api(admin, "POST", "/api/v1/devices", {"id": "smoke-1", "labels": {"site": "ci"}})
        check(status == 201, f"provision device -> {status}")
        token = body["credentials"]["password"]
        status, _ = api(admin, "POST", "/api/v1/service-clients",
                        {"name": "backend", "password": "backend-password",
                         "rules": [{"action": "all", "topic": "device/#", "allow": True}]})
        check(status == 201, f"create service client -> {status}")

        backend = Client("backend-1", "backend", "backend-password", tcp, v5=True)
        check(backend.ok(), "service client connects (paho, v5, tcp)")
        check(backend.subscribe("device/+/telemetry") == [1], "service client subscribes device/+/telemetry")

        for transport, port, v5 in (("tcp", tcp, False), ("websockets", ws, False), ("tcp", tcp, True), ("websockets", ws, True)):
            label = f"paho {'v5' if v5 else 'v3.1.1'} over {transport}"
            dev = Client("smoke-1", "smoke-1", token, port, transport=transport, v5=v5)
            check(dev.ok(), f"device connects ({label})")
            good = dev.subscribe("device/smoke-1/command")
            check(good in ([1],), f"device subscribes its command topic ({label}): {good}")
            bad = dev.subscribe("device/+/command")
            check(bad in ([128], [135]), f"device refused device/+/command ({label}): {bad}")
            before = len(backend.messages)
            dev.publish("device/smoke-1/telemetry", json.dumps({"cpu": 42}))
            dev.publish("device/other/telemetry", "{}")
            wait(lambda: len(backend.messages) > before)
            time.sleep(0.2)
            got = backend.messages[before:]
            check(got == [("device/smoke-1/telemetry", b'{"cpu": 42}')], f"only the allowed publish is routed ({label}): {got}")
            if v5:
                check(dev.pubacks[-1] == 0x87, f"denied publish gets PUBACK 0x87 ({label}): {dev.pubacks}")
            n = len(dev.messages)
            backend.publish("device/smoke-1/command", json.dumps({"type": "RELOAD", "commandId": "c1", "params": {}}))
            check(wait(lambda: len(dev.messages) > n), f"device receives its command ({label})")
            dev.close()
            time.sleep(0.1)

        # Debian's mosquitto clients.
        if shutil.which("mosquitto_sub"):
            sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(tcp), "-i", "smoke-1", "-u", "smoke-1",
                                    "-P", token, "-t", "device/smoke-1/config", "-q", "1", "-C", "1", "-W", "5"],
                                   stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            r = mosquitto(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tcp), "-i", "backend-2", "-u", "backend",
                           "-P", "backend-password", "-t", "device/smoke-1/config", "-q", "1", "-m", '{"version":1,"config":{}}'])
            check(r.returncode == 0, f"mosquitto_pub as service client: {r.stderr.strip()}")
            out, _ = sub.communicate(timeout=10)
            check(out.strip() == '{"version":1,"config":{}}', f"mosquitto_sub as device receives config: {out.strip()!r}")
            r = mosquitto(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tcp), "-i", "smoke-1", "-u", "smoke-1",
                           "-P", "wrong", "-t", "device/smoke-1/telemetry", "-m", "{}"])
            check(r.returncode != 0 and "not authori" in (r.stderr + r.stdout).lower(),
                  f"mosquitto_pub with a wrong token is refused: {r.stderr.strip()}")
            r = mosquitto(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(tcp), "-i", "smoke-1", "-u", "smoke-1", "-P", token,
                           "-t", "#", "-C", "1", "-W", "2", "-V", "mqttv5"])
            check("denied" in (r.stderr + r.stdout).lower() and not r.stdout.strip(),
                  f"mosquitto_sub as device is refused '#': {r.stderr.strip()}")
        else:
            check(os.environ.get("CI") != "true", "mosquitto clients installed")
        backend.close()
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        check(rc == 0, f"fleetmq exits 0 on SIGTERM (got {rc})")
        shutil.rmtree(data, ignore_errors=True)
    print(f"smoke: {CHECKS - len(FAILURES)} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
