#!/usr/bin/env python3
"""A fleetmq webhook receiver (standard library only) that checks X-Fleetmq-Signature
before it trusts a delivery, and answers 2xx only for deliveries it accepted: anything
else is retried by fleetmq with exponential backoff.

    WEBHOOK_SECRET=... python3 examples/python/webhook_receiver.py --port 9000

with, in fleetmq's config:

    [[webhooks]]
    url = "http://127.0.0.1:9000/hooks"
    secret = "..."            # the same WEBHOOK_SECRET
    events = ["command.*", "device.*"]
"""
import argparse
import hashlib
import hmac
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    """True when `header` is "sha256=<hex HMAC-SHA256 of the raw body under secret>".
    Compute it over the bytes exactly as received, before any JSON parsing."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256="):])


def handler_for(secret: bytes, on_event):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not verify_signature(secret, body, self.headers.get("X-Fleetmq-Signature", "")):
                self.send_response(401)
                self.end_headers()
                return
            event = json.loads(body)
            # Delivery is at least once: the event id tells a repeat from a new event.
            on_event(event)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser(description="print verified fleetmq webhook events")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"))
    args = p.parse_args()
    if not args.secret:
        p.error("--secret or WEBHOOK_SECRET is required")
    seen = set()

    def on_event(event):
        if event["id"] in seen:
            return
        seen.add(event["id"])
        print(event["at"], event["type"], event.get("device_id"), json.dumps(event["data"]), flush=True)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(args.secret.encode(), on_event))
    server.serve_forever()


if __name__ == "__main__":
    main()
