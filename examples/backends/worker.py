#!/usr/bin/env python3
"""A chat backend for the gateway, in Python with redis-py (docs/backends.md).

Reads the pushes a `mode = "forward"` rule appends to its Redis stream
(config/example.toml's commented chat:* rule: stream phx:in:chat), in a
consumer group, so that any number of these workers share the load. For each
`new_msg` it checks the body, stores the message in a Redis list, answers the
pushing client with the message's id, and broadcasts the message to the
topic, in one PUBLISH to the entry's reply address. Then it acknowledges the
entry (XACK).

At least once: an entry whose worker died before XACK stays pending in the
group; every worker claims entries idle for longer than CLAIM_IDLE_MS
(XAUTOCLAIM) and handles them again. The gateway answers each push once and
drops a second answer, with its broadcasts, so a retried entry is harmless
as long as storing it is too (here: the message id is the stream entry's id).

    pip install redis   # or: apt-get install python3-redis
    REDIS_URL=redis://127.0.0.1:6379 python3 worker.py

Environment: REDIS_URL, STREAM (phx:in:chat), GROUP (chat), CONSUMER
(host-pid), CLAIM_IDLE_MS (5000; keep it below the rule's reply_timeout_ms).
STALL_ON (tests only): a body containing it makes this worker hang before
answering, as a worker that dies mid-entry would.
"""

import json
import os
import socket
import sys
import time

import redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
STREAM = os.environ.get("STREAM", "phx:in:chat")
GROUP = os.environ.get("GROUP", "chat")
CONSUMER = os.environ.get("CONSUMER", f"{socket.gethostname()}-{os.getpid()}")
CLAIM_IDLE_MS = int(os.environ.get("CLAIM_IDLE_MS", "5000"))
STALL_ON = os.environ.get("STALL_ON")
MAX_BODY = 2000
KEEP = 1000  # messages kept per topic


def log(*args):
    print(f"[{CONSUMER}]", *args, flush=True)


def field(entry, name):
    return entry.get(name.encode(), b"").decode()


def handle(r, entry_id, entry):
    """Answers one forwarded push; returns nothing, raises on Redis errors."""
    topic, event = field(entry, "topic"), field(entry, "event")
    reply_to, reply_ref = field(entry, "reply_to"), field(entry, "reply_ref")
    try:
        payload = json.loads(field(entry, "payload"))
        claims = json.loads(field(entry, "claims") or "{}")
    except ValueError:
        payload, claims = None, {}
    body = payload.get("body") if isinstance(payload, dict) else None
    if STALL_ON and isinstance(body, str) and STALL_ON in body:
        log("stalling on", entry_id)
        time.sleep(3600)
    if event != "new_msg" or not isinstance(body, str) or not body.strip():
        answer = {"status": "error", "response": {"reason": "a new_msg needs a body"}}
    elif len(body) > MAX_BODY:
        answer = {"status": "error", "response": {"reason": "message too long"}}
    else:
        msg_id = entry_id.decode()
        message = {
            "id": msg_id,
            "body": body.strip(),
            "user": claims.get("sub") or payload.get("user") or "anonymous",
        }
        key = f"chat:messages:{topic}"
        r.rpush(key, json.dumps(message))
        r.ltrim(key, -KEEP, -1)
        answer = {
            "status": "ok",
            "response": {"id": msg_id, "worker": CONSUMER},
            "broadcasts": [{"topic": topic, "event": "new_msg", "payload": message}],
        }
    if reply_to:  # absent when the rule answers on store
        r.publish(reply_to, json.dumps({"ref": reply_ref, **answer}))
    log("handled", entry_id.decode(), answer["status"])


def main():
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    log("consuming", STREAM, "as", GROUP)
    next_claim = 0.0
    while True:
        batches = []
        if time.monotonic() >= next_claim:
            # Entries whose worker died before XACK.
            _, claimed, *_ = r.xautoclaim(STREAM, GROUP, CONSUMER, CLAIM_IDLE_MS, "0-0", count=100)
            batches.append(claimed)
            next_claim = time.monotonic() + CLAIM_IDLE_MS / 2000
        for _, entries in r.xreadgroup(GROUP, CONSUMER, {STREAM: ">"}, count=100, block=500) or []:
            batches.append(entries)
        for entries in batches:
            for entry_id, entry in entries:
                if entry is None:  # trimmed from the stream meanwhile
                    r.xack(STREAM, GROUP, entry_id)
                    continue
                handle(r, entry_id, entry)
                r.xack(STREAM, GROUP, entry_id)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
