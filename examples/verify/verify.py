"""Verifying walhook's requests in Python (standard library only).

    python3 verify.py request.json    # prints "ok" or "bad"

request.json: {"secret": "...", "scheme": "hmac" | "jiandaoyun",
               "headers": {lowercase name: value}, "query": {name: value},
               "body": "<the raw body, exactly as received>"}
"""

import base64
import hashlib
import hmac
import json
import sys
import time


def verify_hmac(secret: str, headers: dict, body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks: webhook-signature holds "v1,<base64 HMAC-SHA256>" of
    "{webhook-id}.{webhook-timestamp}.{body}", one per secret during a rotation."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False  # stale or replayed
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(sig, expected)
        for version, _, sig in (s.partition(",") for s in headers.get("webhook-signature", "").split())
    )


def verify_jiandaoyun(secret: str, query: dict, headers: dict, body: bytes) -> bool:
    """简道云 data push: x-jdy-signature = hex(sha1("nonce:body:secret:timestamp")),
    nonce and timestamp from the query string."""
    signed = b":".join([query["nonce"].encode(), body, secret.encode(), query["timestamp"].encode()])
    expected = hashlib.sha1(signed).hexdigest()
    return hmac.compare_digest(headers.get("x-jdy-signature", ""), expected)


if __name__ == "__main__":
    req = json.load(open(sys.argv[1], encoding="utf-8"))
    body = req["body"].encode()
    if req["scheme"] == "hmac":
        good = verify_hmac(req["secret"], req["headers"], body)
    else:
        good = verify_jiandaoyun(req["secret"], req["query"], req["headers"], body)
    print("ok" if good else "bad")
