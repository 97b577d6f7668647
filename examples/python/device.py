#!/usr/bin/env python3
"""A fleetmq device in Python (paho-mqtt 2.x), speaking the device contract of
docs/devices.md: status (retained, and as last will), telemetry, commands and responses,
versioned config, and -- when the device is provisioned with "encrypted": true or the
broker runs with payload encryption -- the AES-256-GCM envelope on every payload.

    pip install paho-mqtt==2.2.0 cryptography
    python3 examples/python/device.py --id sensor-1 --password "$TOKEN" \\
        [--key "$KEY_BASE64" --key-generation 1] [--host 127.0.0.1 --port 1883]

The password and key may also come from FLEETMQ_DEVICE_PASSWORD / FLEETMQ_DEVICE_KEY.
It answers every command with success (type FAIL is answered with an error, to show
that shape), publishes telemetry every --telemetry-every seconds, and applies config
versions it receives. SIGINT/SIGTERM: it publishes "offline" and disconnects cleanly.
"""
import argparse
import base64
import json
import os
import signal
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt

VERSION = "1.0.0"


class Envelope:
    """SPEC section 4: byte 0 = 0x01, byte 1 = key generation, bytes 2..14 = nonce,
    then AES-256-GCM ciphertext and its 16-byte tag; the topic name is the AAD."""

    HEADER = 14
    TAG = 16

    def __init__(self, keys):
        # Imported here so that devices without encryption need only paho-mqtt.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = {gen: AESGCM(key) for gen, key in keys.items()}
        self.current = max(keys)

    def seal(self, topic, plaintext):
        nonce = os.urandom(12)  # random 96-bit nonces: unique per message in practice
        sealed = self._aead[self.current].encrypt(nonce, plaintext, topic.encode())
        return bytes([0x01, self.current]) + nonce + sealed

    def open(self, topic, envelope):
        if len(envelope) < self.HEADER + self.TAG:
            raise ValueError(f"envelope too short: {len(envelope)} bytes")
        if envelope[0] != 0x01:
            raise ValueError(f"unknown envelope version {envelope[0]:#04x}")
        aead = self._aead.get(envelope[1])
        if aead is None:
            raise ValueError(f"no key for generation {envelope[1]}")
        return aead.decrypt(envelope[2:self.HEADER], envelope[self.HEADER:], topic.encode())


class Device:
    def __init__(self, args):
        self.id = args.id
        self.topic = lambda leaf: f"device/{self.id}/{leaf}"
        self.envelope = None
        if args.key:
            self.envelope = Envelope({args.key_generation: base64.b64decode(args.key)})
        self.config_version = None
        self.config = {}
        self.answered = {}  # commandId -> response: the broker may re-send a command
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.telemetry_every = args.telemetry_every

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.username_pw_set(self.id, args.password)
        # The last will is a payload like any other: sealed when encryption applies.
        self.client.will_set(self.topic("status"), self.encode("status", {"state": "offline"}),
                             qos=1, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.client.on_disconnect = self.on_disconnect
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.host, self.port = args.host, args.port

    # Payloads -------------------------------------------------------------------------

    def encode(self, leaf, obj):
        plaintext = json.dumps(obj, separators=(",", ":")).encode()
        if self.envelope is None:
            return plaintext
        return self.envelope.seal(self.topic(leaf), plaintext)

    def decode(self, topic, payload):
        if self.envelope is not None:
            payload = self.envelope.open(topic, payload)
        return json.loads(payload) if payload else None

    def publish(self, leaf, obj, retain=False):
        self.client.publish(self.topic(leaf), self.encode(leaf, obj), qos=1, retain=retain)

    def publish_status(self):
        status = {"state": "online", "version": VERSION, "ip": local_ip()}
        if self.config_version is not None:
            status["configVersion"] = self.config_version
        self.publish("status", status, retain=True)

    # MQTT callbacks -------------------------------------------------------------------

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log(f"connect refused: {reason_code}")
            return
        log(f"connected as {self.id}")
        client.subscribe([(self.topic("command"), 1), (self.topic("config"), 1)])
        self.publish_status()

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        if not self.stop.is_set():
            log(f"disconnected ({reason_code}); paho reconnects")

    def on_message(self, client, userdata, msg):
        try:
            body = self.decode(msg.topic, msg.payload)
        except Exception as e:  # a payload we cannot open: say so, keep running
            log(f"dropped a message on {msg.topic}: {e}")
            return
        if msg.topic == self.topic("command"):
            self.on_command(body)
        elif msg.topic == self.topic("config") and body:
            self.on_config(body)

    def on_command(self, command):
        command_id = command.get("commandId")
        if command_id in self.answered:  # a re-send: answer again, do not act again
            self.publish("response", self.answered[command_id])
            return
        kind, params = command.get("type"), command.get("params") or {}
        log(f"command {command_id}: {kind} {json.dumps(params)}")
        if kind == "FAIL":
            response = {"commandId": command_id, "success": False, "error": "asked to fail"}
        else:
            response = {"commandId": command_id, "success": True,
                        "result": {"type": kind, "params": params, "uptime": self.uptime()}}
        self.answered[command_id] = response
        self.publish("response", response)

    def on_config(self, message):
        version = message.get("version")
        if version == self.config_version:
            return
        self.config, self.config_version = message.get("config") or {}, version
        log(f"config version {version}: {json.dumps(self.config)}")
        self.telemetry_every = float(self.config.get("telemetry_every_s", self.telemetry_every))
        self.publish_status()  # reports configVersion back to the broker

    # Main loop ------------------------------------------------------------------------

    def uptime(self):
        return int(time.monotonic() - self.started)

    def run(self):
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        while not self.stop.wait(self.telemetry_every):
            if self.client.is_connected():
                self.publish("telemetry", {"cpu": cpu_percent(), "uptime": self.uptime(),
                                           "ts": int(time.time() * 1000)})
        # A clean goodbye: the retained status says offline, then DISCONNECT (no will).
        info = self.client.publish(self.topic("status"), self.encode("status", {"state": "offline"}),
                                   qos=1, retain=True)
        info.wait_for_publish(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()


def cpu_percent():
    try:
        return min(100.0, round(os.getloadavg()[0] * 100 / (os.cpu_count() or 1), 1))
    except OSError:
        return 0.0


def local_ip():
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def log(text):
    print(f"device: {text}", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--id", required=True, help="device id (also MQTT client id and username)")
    p.add_argument("--password", default=os.environ.get("FLEETMQ_DEVICE_PASSWORD"),
                   help="the token from provisioning [env FLEETMQ_DEVICE_PASSWORD]")
    p.add_argument("--key", default=os.environ.get("FLEETMQ_DEVICE_KEY"),
                   help="base64 AES-256 key when payloads are encrypted [env FLEETMQ_DEVICE_KEY]")
    p.add_argument("--key-generation", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--telemetry-every", type=float, default=5.0, metavar="SECONDS")
    args = p.parse_args()
    if not args.password:
        p.error("--password (or FLEETMQ_DEVICE_PASSWORD) is required")
    device = Device(args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: device.stop.set())
    device.run()


if __name__ == "__main__":
    main()
