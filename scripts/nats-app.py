#!/usr/bin/env python3
"""Plays the local OpenCloud apps against ocd's NATS bridge, with nats-py (an outside client).

  nats-app.py propagate URL ACTION DATATYPE USER INNER_JSON [INNER_DATATYPE]
      publish a `propalgation_event` as an app would: a NATSResponse whose base64 Payload is
      {"DataType", "Action", "Payload": base64(INNER_JSON)}; ACTION and DATATYPE are names
      (PB_CREATE, PEER) or numbers
  nats-app.py publish URL SUBJECT JSON
      publish JSON as it is
  nats-app.py listen URL OUT SUBJECT [SUBJECT ...]
      append every message on the subjects to OUT as a JSON line: subject, msg_id (the
      Nats-Msg-Id header), the message, and its base64 Payload decoded (JSON when it is) —
      until killed; prints "ready" once subscribed
  nats-app.py answer URL SUBJECT REPLY_JSON [COUNT]
      answer every request on SUBJECT with REPLY_JSON, COUNT times per request (default 1);
      logs each request as a JSON line on stdout; prints "ready" once subscribed
  nats-app.py stream-create URL NAME SUBJECT [SUBJECT ...]
      create a JetStream stream (file storage, 2 min duplicate window) capturing the subjects:
      what ocd publishes is kept even when no app listens, and republications with the same
      Nats-Msg-Id are stored once (the server needs -js)
  nats-app.py stream-dump URL NAME OUT
      write every message of the stream to OUT as JSON lines (as `listen` does)

Needs `pip install nats-py`. Exits 2 with a message when it is missing.
"""

import asyncio
import base64
import json
import sys

try:
    import nats
except ImportError:  # pragma: no cover
    print("nats-app.py: the nats-py package is missing (pip install nats-py)", file=sys.stderr)
    sys.exit(2)


def b64(obj):
    data = obj if isinstance(obj, (bytes, bytearray)) else json.dumps(obj).encode()
    return base64.b64encode(data).decode()


def code(v):
    try:
        return int(v)
    except ValueError:
        return v


async def connect(url):
    return await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


async def propagate(url, action, datatype, user, inner, inner_dt=None):
    nc = await connect(url)
    prop = {"DataType": code(inner_dt if inner_dt is not None else datatype), "Action": code(action),
            "Payload": b64(json.loads(inner))}
    msg = {"FromApp": "oc-test-app", "Datatype": code(datatype), "Method": "PROPALGATION_EVENT",
           "User": user, "Groups": ["g1"], "Payload": b64(prop)}
    await nc.publish("propalgation_event", json.dumps(msg).encode())
    await nc.flush()
    await nc.close()


async def publish(url, subject, body):
    nc = await connect(url)
    await nc.publish(subject, body.encode())
    await nc.flush()
    await nc.close()


def decode(data):
    try:
        msg = json.loads(data)
    except ValueError:
        return {"raw": data.decode(errors="replace")}
    inner = None
    if isinstance(msg, dict) and isinstance(msg.get("Payload"), str):
        try:
            raw = base64.b64decode(msg["Payload"])
            try:
                inner = json.loads(raw)
            except ValueError:
                inner = raw.decode(errors="replace")
        except ValueError:
            inner = None
    return {"message": msg, "payload": inner}


async def listen(url, out, subjects):
    nc = await connect(url)
    f = open(out, "a", buffering=1)

    async def handler(m):
        line = {"subject": m.subject, "msg_id": (m.headers or {}).get("Nats-Msg-Id")}
        line.update(decode(m.data))
        f.write(json.dumps(line) + "\n")

    for s in subjects:
        await nc.subscribe(s, cb=handler)
    await nc.flush()
    print("ready", flush=True)
    while True:
        await asyncio.sleep(3600)


async def answer(url, subject, reply, count):
    nc = await connect(url)

    async def handler(m):
        print(json.dumps({"subject": m.subject, "request": json.loads(m.data)}), flush=True)
        for _ in range(count):
            await nc.publish(m.reply, reply.encode())

    await nc.subscribe(subject, cb=handler)
    await nc.flush()
    print("ready", flush=True)
    while True:
        await asyncio.sleep(3600)


async def stream_create(url, name, subjects):
    from nats.js.api import StreamConfig, StorageType
    nc = await connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=subjects, storage=StorageType.FILE, duplicate_window=120))
    await nc.close()


async def stream_dump(url, name, out):
    nc = await connect(url)
    js = nc.jetstream()
    info = await js.stream_info(name)
    with open(out, "w") as f:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await js.get_msg(name, seq)
            except Exception:  # deleted or missing sequence
                continue
            line = {"subject": m.subject, "msg_id": (m.headers or {}).get("Nats-Msg-Id")}
            line.update(decode(m.data))
            f.write(json.dumps(line) + "\n")
    await nc.close()


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, url, rest = argv[1], argv[2], argv[3:]
    if cmd == "propagate" and len(rest) in (4, 5):
        asyncio.run(propagate(url, *rest))
    elif cmd == "publish" and len(rest) == 2:
        asyncio.run(publish(url, *rest))
    elif cmd == "listen" and len(rest) >= 2:
        asyncio.run(listen(url, rest[0], rest[1:]))
    elif cmd == "answer" and len(rest) in (2, 3):
        asyncio.run(answer(url, rest[0], rest[1], int(rest[2]) if len(rest) == 3 else 1))
    elif cmd == "stream-create" and len(rest) >= 2:
        asyncio.run(stream_create(url, rest[0], rest[1:]))
    elif cmd == "stream-dump" and len(rest) == 2:
        asyncio.run(stream_dump(url, *rest))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
