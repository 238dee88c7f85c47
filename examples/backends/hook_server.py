#!/usr/bin/env python3
"""An example backend for the gateway's HTTP hooks (docs/hooks.md), with
the Python standard library only.

It verifies every request's signature, then answers:

- connect: `user` connect param -> assigns {"user": ...} and socket id
  `users_socket:<user>`; no `user`, or user "banned" -> refused with 403.
- join: every topic is open to every user, except topics whose part after
  the first `:` starts with `admin-` (`room:admin-ops`), open only to the
  user "admin" (refused with reason "forbidden"). The reply greets the
  user; presence meta gets the user's name.
- push: `shout` is broadcast to the topic upper-cased and replied ok; any
  other event is replied error.

Run it next to a gateway whose config points its hooks here (see the
commented example in config/example.toml):

    GATEWAY_HOOK_SECRET=change-me-to-16-bytes-or-more \
        python3 examples/backends/hook_server.py --port 4100
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Requests signed longer ago than this are refused, so a captured request
# cannot be replayed later.
MAX_AGE_SECONDS = 300
MAX_BODY = 1 << 20


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """The gateway signs `timestamp + "." + body` with HMAC-SHA256."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    if age > MAX_AGE_SECONDS:
        return False
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), signature)


def connect(req):
    user = req["params"].get("user")
    if not user or user == "banned":
        return {"result": "error", "status": 403, "reason": "unknown or banned user"}
    return {"result": "ok", "assigns": {"user": user}, "socket_id": f"users_socket:{user}"}


def join(req):
    user = req["assigns"].get("user")
    topic = req["topic"]
    if topic.partition(":")[2].startswith("admin-") and user != "admin":
        return {"result": "error", "reason": "forbidden"}
    return {
        "result": "ok",
        "reply": {"welcome": f"hello {user}, this is {topic}"},
        "assigns": {"room": topic},
        "presence_meta": {"name": user},
    }


def push(req):
    if req["event"] != "shout":
        return {"status": "error", "response": {"reason": "unknown event"}}
    text = str(req["payload"].get("body", ""))
    return {
        "status": "ok",
        "response": {"shouted": True},
        "broadcasts": [
            {
                "topic": req["topic"],
                "event": "shout",
                "payload": {"body": text.upper(), "from": req["assigns"].get("user")},
            }
        ],
    }


HOOKS = {"connect": connect, "join": join, "push": push}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive: the gateway pools its connections.
    protocol_version = "HTTP/1.1"
    secret = b""

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self.answer(413, {"error": "too large"})
        body = self.rfile.read(length)
        signed = verify(
            self.secret,
            self.headers.get("x-gateway-timestamp", ""),
            body,
            self.headers.get("x-gateway-signature", ""),
        )
        if not signed:
            return self.answer(401, {"error": "bad signature"})
        hook = HOOKS.get(self.headers.get("x-gateway-hook", ""))
        if hook is None:
            return self.answer(404, {"error": "unknown hook"})
        try:
            request = json.loads(body)
            return self.answer(200, hook(request))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return self.answer(400, {"error": str(e)})

    def answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("hook_server: " + (fmt % args) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4100)
    args = parser.parse_args()
    secret = os.environ.get("GATEWAY_HOOK_SECRET", "")
    if not secret:
        sys.exit("hook_server: set GATEWAY_HOOK_SECRET (the gateway's hooks.secret)")
    Handler.secret = secret.encode()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"hook_server: listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
