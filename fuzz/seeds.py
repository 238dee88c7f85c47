#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ (docs/fuzzing.md): the
spec's conformance vectors, real frames, example tokens and configs. Run from
the repository root; the files are committed, so this only matters when a
seed changes."""
import base64, hashlib, hmac, json, os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def masked(b0, payload, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n <= 0xFFFF:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# frame_reader: limit (u16 LE), piece sizes, stalls, then the wire.
def fr(name, wire, max_=4096, pieces=0x35, stall=0x5A):
    put("frame_reader", name, struct.pack("<H", max_) + bytes([pieces, stall]) + wire)

join = b'["1","1","room:lobby","phx_join",{}]'
fr("join", masked(0x81, join))
fr("heartbeat_close", masked(0x81, b'[null,"2","phoenix","heartbeat",{}]') + masked(0x88, b"\x03\xe8bye"))
fr("fragments_ping", masked(0x01, b"he") + masked(0x89, b"p") + masked(0x80, b"llo") + masked(0x8A, b"") + masked(0x81, b"x"))
fr("binary_push", masked(0x82, b"\x00\x01\x02\x0a\x08" + b"129room:lobbyecho_bin" + b"\xde\xad"))
fr("len126", masked(0x81, b"a" * 300), max_=300)
fr("len127", bytes([0x82, 0xFF]) + struct.pack(">Q", 5) + b"\x00\x00\x00\x00hello")
fr("too_large", masked(0x81, b"a" * 101), max_=100)
fr("huge_len", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 62) + b"\x00\x00\x00\x00")
fr("unmasked", b"\x81\x01a")
fr("rsv", masked(0xC1, b"a"))
fr("opcode", masked(0x83, b"a"))
fr("bad_utf8", masked(0x81, b"\xff\xfe"))
fr("utf8_split", masked(0x01, "é".encode()[:1]) + masked(0x80, "é".encode()[1:]))
fr("close_1byte", masked(0x88, b"\x03"))
fr("close_1005", masked(0x88, b"\x03\xed"))
fr("close_bad_reason", masked(0x88, b"\x03\xe8\xff"))
fr("long_ping", masked(0x89, b"p" * 126))
fr("fragmented_ping", masked(0x09, b"p"))
fr("orphan_continuation", masked(0x80, b"x"))
fr("nested_message", masked(0x01, b"a") + masked(0x81, b"b"))
fr("truncated", masked(0x81, join)[:20])

# protocol_v2: the client frames of the spec's conformance vectors.
v2 = [
    '[null,"10","phoenix","heartbeat",{}]',
    '["9","11","phoenix","heartbeat",{}]',
    '["1","1","room:lobby","phx_join",{}]',
    '["2","2","room:welcome","phx_join",{"name":"a"}]',
    '["3","4","room:secret","ping",{}]',
    '["1","12","room:lobby","ping",{"x":1}]',
    '[null,"13","room:lobby","ping",{}]',
    '["1","20","room:lobby","phx_leave",{}]',
    '["1","19","room:lobby","shout",{"b":"hi"}]',
    '["1","2"]',
    '{"topic":"room:lobby"}',
    '[7,8,"room:lobby","access_token",{"access_token":"x.y.z"},"extra"]',
    '["1","1","a\\"b\\u00e9","e",[1,2.5e3,null,true,"\\ud83d\\ude00"]]',
    ' [ "1" , null , "t" , "e" , 1 ] ',
]
for i, s in enumerate(v2):
    put("protocol_v2", f"vector{i:02}", s)

v1 = [
    '{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}',
    '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}',
    '{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"},"ref":"3"}',
    '{"topic":"room:lobby","event":"e","payload":[1],"ref":7,"join_ref":8,"other":1}',
    '{"topic":"room:lobby"}',
    '["1","1","room:lobby","phx_join",{}]',
]
for i, s in enumerate(v1):
    put("protocol_v1", f"frame{i:02}", s)

put("protocol_binary", "spec_vector24", b"\x00\x01\x02\x0a\x08" + b"129room:lobbyecho_bin" + b"\xde\xad")
put("protocol_binary", "empty_refs", b"\x00\x00\x00\x06\x04" + b"room:1ping")
put("protocol_binary", "reply_kind", b"\x01\x01\x02\x0a\x02" + b"129room:lobbyok")
put("protocol_binary", "truncated", b"\x00\x09\x00\x00\x00x")
put("protocol_binary", "bad_utf8", b"\x00\x01\x00\x00\x00\xff")

envelopes = [
    '{"event":"new_msg","payload":{"body":"hi"}}',
    '{"event":"disconnect"}',
    '{"v":1,"event":"new_msg","origin":{"node":"3f2a9c","conn":7},"payload":{"body":"from a pod"}}',
    '{"event":"x","payload":null,"origin":"not an origin"}',
    '{"event":"presence_diff","payload":{"joins":{},"leaves":{}}}',
    '{"event":"lp","payload":{"mac":"00","msg":{"t":"probe"}}}',
    '{"event":""}',
    '{"event":1}',
    '[]',
    'nope',
    '{"event":"frame","binary":"3q2+7w=="}',
    '{"v":2,"event":"frame","origin":{"node":"3f2a9c","conn":7},"binary":"AAEC/w"}',
    '{"event":"frame","binary":"%%"}',
    '{"event":"frame","binary":"AA==","payload":{}}',
]
for i, s in enumerate(envelopes):
    put("redis_envelope", f"envelope{i:02}", s)

# longpoll_body: flags (1 ndjson, 2 V2, 4-8 limit, 16 recipe, 32 CRLF), body.
lines = '["1","1","room:lobby","phx_join",{}]\n["1","2","room:lobby","new_msg",{"body":"hi"}]'
bin_line = base64.b64encode(b"\x00\x01\x02\x0a\x08" + b"129room:lobbyecho_bin" + b"\xde\xad").decode()
put("longpoll_body", "ndjson", bytes([1 | 2 | 12]) + lines.encode())
put("longpoll_body", "binary_line", bytes([1 | 2 | 12]) + (lines + "\n" + bin_line + "\r\n\n").encode())
put("longpoll_body", "v1_legacy", bytes([0 | 12]) + b'{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}')
put("longpoll_body", "over_limit", bytes([1 | 2]) + lines.encode())
put("longpoll_body", "many_lines", bytes([1 | 2 | 12]) + ("\n".join(['[null,"1","phoenix","heartbeat",{}]'] * 110)).encode())
put("longpoll_body", "recipe", bytes([16 | 32]) + bytes(range(256)))

# longpoll_token: mode 0 (a string), 1 (a signed token changed), 2 (MACs), 3 (relay).
secret = b"fuzz-longpoll-secret"
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
body = b64(f"v1.3f2a9c.{0xdeadbeef:032x}.7".encode())
token = body + "." + b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
put("longpoll_token", "token", b"\x00" + token.encode())
put("longpoll_token", "garbage", b"\x00a.b.c")
put("longpoll_token", "tamper", b"\x01" + bytes(range(64)))
put("longpoll_token", "mac", b"\x02" + bytes(range(100, 160)))
msg = '{"t":"post","id":3,"from":"n1","session":"ab","lines":["[\\"1\\",\\"1\\",\\"room:a\\",\\"phx_join\\",{}]"]}'
mac = hmac.new(secret, msg.encode(), hashlib.sha256).hexdigest()
put("longpoll_token", "relay_sealed", b"\x00" + f'{{"mac":"{mac}","msg":{msg}}}'.encode())
put("longpoll_token", "relay_json", b"\x03" + bytes([len(msg)]) + msg.encode())

for i, n in enumerate([16, 64, 256, 1024]):
    put("jwt", f"recipe{i}", hashlib.sha512(bytes([i])).digest() * (n // 64 + 1))

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(here, "config", "example.toml")) as f:
    put("config", "example.toml", f.read())
put("config", "empty.toml", "")
put("config", "rs256.toml", '[[socket]]\npath = "/socket"\nrequire_token = true\nsocket_id = "users_socket:{sub}"\ntopics_claim = "topics"\n[socket.jwt]\nalgorithm = "RS256"\npublic_key_file = "/x.pem"\nleeway_secs = 30\nissuer = "me"\naudience = "gw"\n\n[[channel]]\npattern = "user:{sub}"\npolicy = "token"\n')
put("config", "hs256.toml", '[[socket]]\npath = "/socket"\n[socket.jwt]\nalgorithm = "HS256"\nsecret = "s"\nleeway_secs = 30\nissuer = "me"\n')
# Before jwt.leeway_secs was capped, this one validated and then panicked
# in jsonwebtoken (now - leeway) when a token was checked.
put("config", "hs256_leeway_past_epoch.toml", '[[socket]]\n[socket.jwt]\nsecret = "s"\nleeway_secs = 3000000000\n')
put("config", "redis.toml", '[redis]\nurl = "redis://127.0.0.1:6379"\nprefix = "phx:"\n[server]\nmax_connections = 10\n[[socket]]\npath = "/a"\n[socket.longpoll]\nenabled = true\n[[socket]]\npath = "/a"\n')

patterns = [
    "room:*\nroom:lobby",
    "room:*\nrooms",
    "ping\nping",
    "user:{sub}\nuser:42",
    "user:{sub}\nuser:a:b",
    "notifications:t-{team}:u-{sub}\nnotifications:t-7:u-42",
    "t:{a}-x*\nt:1-x-x-more",
    "{a}-{b}-{c}\n1-2-3-4",
    "users_socket:{sub}\nusers_socket:é😀",
    "a:{x}{y}\na:12",
    "a*b\nab",
    "*\nanything",
]
for i, s in enumerate(patterns):
    put("topic_pattern", f"pattern{i:02}", s)
