"""A sample webhook receiver for walhook: verifies the Standard Webhooks
signature and prints each event. Python standard library only.

    WEBHOOK_SECRET=whsec_... LISTEN=0.0.0.0:8080 python3 receiver.py

Answers 204 to a verified request, 401 to a bad or stale signature (walhook
then retries and finally dead-letters the event).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 5 * 60


def signing_key(secret: str) -> bytes:
    # "whsec_<base64>" is base64-decoded, as the Standard Webhooks libraries do;
    # any other secret is used as its UTF-8 bytes (as walhook does).
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def verify(key: bytes, headers, body: bytes) -> bool:
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and signatures):
        return False
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False  # a replayed or badly delayed request
    signed = b".".join([msg_id.encode(), timestamp.encode(), body])
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # During a secret rotation the header carries one "v1,<sig>" per secret.
    for candidate in signatures.split():
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    key = b""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if not verify(self.key, self.headers, body):
            self.send_response(401)
            self.end_headers()
            print(f"rejected {self.headers.get('webhook-id')}: bad signature", flush=True)
            return
        event = json.loads(body)
        events = event.get("events", [event])
        for e in events:
            print(f"verified {e['id']} {e['op']} {e['form']} {json.dumps(e.get('data'))}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass  # one line per event above is enough


def main():
    host, _, port = os.environ.get("LISTEN", "127.0.0.1:8080").rpartition(":")
    Handler.key = signing_key(os.environ["WEBHOOK_SECRET"])
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
