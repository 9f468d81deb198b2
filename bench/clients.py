"""Helper processes (``python -m bench.clients KIND ...``), each printing JSON lines to its parent.

Separate processes so that each one's CPU time is its own and none steals the benchmark's GIL:
``sub``     a bare counting subscriber (paho-mqtt callback or aiomqtt async iterator) -> first/last/CPU;
``pace``    a paced publisher on plain MQTT packets (events carry their send time in ``t``) -> events and bytes sent;
``latsub``  times each echoed event against its ``t`` (received by ``mosquitto_sub``) -> latency percentiles;
``aggsub``  a bare paho subscriber counting the window results in aggregate batches (the hub's ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.mqtt_wire import Publisher

HOST = "127.0.0.1"


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def connect_props() -> Properties:
    # Like the agent's intake: mosquitto otherwise holds back QoS 1 deliveries to MQTT 5 clients.
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 65535
    return props


def paho_client(version: int = 5) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311)


def no_delay(client: mqtt.Client) -> None:
    """Nagle off, as the agent has it: otherwise a QoS 0 probe, which gets no PUBACK to carry the TCP
    acknowledgements back, waits milliseconds per small packet in the probe's own socket."""
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_kwargs(version: int) -> dict[str, Any]:
    return {"properties": connect_props()} if version == 5 else {}


# -- bare subscribers ------------------------------------------------------------------------------------
def session_kwargs(version: int) -> dict[str, Any]:
    """A persistent session, as the agent's intake has one: the broker keeps our queue while we are away."""
    if version == 5:
        props = connect_props()
        props.SessionExpiryInterval = 3600
        return {"properties": props, "clean_start": False}
    return {}


def sub_paho(args: argparse.Namespace) -> None:
    """Count ``count`` messages. ``--session create``: open a persistent session, subscribe, leave (the broker then
    queues for us); ``--session resume``: come back to it and drain, timed from the CONNECT."""
    state = {"n": 0, "first": 0.0}
    if args.session:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            protocol=mqtt.MQTTv5 if args.mqtt == 5 else mqtt.MQTTv311,
            clean_session=None if args.mqtt == 5 else False,
        )
        if args.session == "create":

            def subscribed(c: mqtt.Client, *_a: Any) -> None:
                emit(ready=True, cpu=cpu())
                c.disconnect()

            client.on_subscribe = subscribed
            client.on_connect = lambda c, *_a: c.subscribe(args.topic, args.qos)
        else:
            client.on_connect = lambda _c, _u, flags, *_a: state.update(present=float(flags.session_present))
        client.on_message = _counting(client, state, args.count)
        if args.session == "resume":
            emit(ready=True, cpu=cpu(), connect=time.time())
        client.connect(HOST, args.port, **session_kwargs(args.mqtt))
        client.loop_forever()
        return
    client = paho_client(args.mqtt)

    def on_message(_c: mqtt.Client, _u: Any, _msg: mqtt.MQTTMessage) -> None:
        state["n"] += 1
        if state["n"] == 1:
            state["first"] = time.time()
        if state["n"] == args.count:
            emit(first=state["first"], last=time.time(), cpu=cpu(), count=state["n"])
            client.disconnect()

    client.on_message = on_message
    client.on_subscribe = lambda *_a: emit(ready=True, cpu=cpu())
    client.on_connect = lambda c, *_a: c.subscribe(args.topic, args.qos)
    client.connect(HOST, args.port, **connect_kwargs(args.mqtt))
    client.loop_forever()


def _counting(client: mqtt.Client, state: dict[str, float], count: int) -> Any:
    def on_message(_c: mqtt.Client, _u: Any, _msg: mqtt.MQTTMessage) -> None:
        state["n"] += 1
        if state["n"] == 1:
            state["first"] = time.time()
        if state["n"] == count:
            emit(first=state["first"], last=time.time(), cpu=cpu(), count=state["n"],
                 session_present=bool(state.get("present")))  # fmt: skip
            client.disconnect()

    return on_message


async def _sub_aiomqtt(args: argparse.Namespace) -> None:
    import aiomqtt

    n, first = 0, 0.0
    version = aiomqtt.ProtocolVersion.V5 if args.mqtt == 5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(HOST, args.port, protocol=version, **connect_kwargs(args.mqtt)) as client:
        await client.subscribe(args.topic, qos=args.qos)
        emit(ready=True, cpu=cpu())
        async for _message in client.messages:
            n += 1
            if n == 1:
                first = time.time()
            if n == args.count:
                emit(first=first, last=time.time(), cpu=cpu(), count=n)
                return


def aggsub(args: argparse.Namespace) -> None:
    """Count the window results in aggregate batches (``{"seq":`` occurrences, no parsing) until ``count``."""
    state = {"records": 0, "messages": 0, "bytes": 0, "first": 0.0, "last": time.monotonic()}
    client = paho_client(args.mqtt)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not state["messages"]:
            state["first"] = time.time()
        state["messages"] += 1
        state["bytes"] += len(msg.payload)
        state["records"] += msg.payload.count(b'{"seq":')
        state["last"] = time.monotonic()

    def on_subscribe(*_a: Any) -> None:
        state["last"] = time.monotonic()
        emit(ready=True, cpu=cpu())

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *_a: c.subscribe(args.topic, args.qos)
    client.connect(HOST, args.port, **connect_kwargs(args.mqtt))
    while state["records"] < args.count and (not state["messages"] or time.monotonic() - state["last"] < args.idle):
        client.loop(0.05)
    emit(first=state["first"], last=time.time() - (time.monotonic() - state["last"]), cpu=cpu(),
         records=state["records"], messages=state["messages"], bytes=state["bytes"])  # fmt: skip
    client.disconnect()


# -- paced publisher -------------------------------------------------------------------------------------
TICK = 0.001


def pace(args: argparse.Namespace) -> None:
    """Publish ``rate`` events/s for ``seconds``, each stamped with its send time.

    The events due in each tick of at least TICK leave in one write (5 at 5,000/s), each stamped as it is
    built, through the few MQTT packets of ``bench.mqtt_wire``: paho took 0.37 of a core for this at 5,000/s
    QoS 1, on the 2 cores the agent under test shares with it (see that module). The PUBACKs that came during a
    tick's wait are read once after it.
    """
    pub = Publisher(HOST, args.port, args.topic, args.qos, client_id=f"bench-pace-{os.getpid()}")
    while time.time() < args.at:
        time.sleep(min(0.05, max(0.0, args.at - time.time())))
    sent = nbytes = 0
    total = int(args.rate * args.seconds)
    start = time.time()
    emit(started=start)
    while sent < total:
        due = min(total, int((time.time() - start) * args.rate) + 1)
        group = []
        while sent < due:
            body = b'{"seq":%d,"temp":%.2f,"t":%.6f}' % (sent, 18.0 + (sent % 700) / 100, time.time())
            group.append(body)
            sent += 1
            nbytes += len(body)
        pub.send(group)
        # Waits of at least TICK: a wait per event (0.2 ms at 5,000/s) costs the probe far more CPU. Each
        # event still carries its own send time.
        time.sleep(max(TICK, start + sent / args.rate - time.time()))
        pub.read()
    end = time.time()
    pub.settle(1.0)  # the last PUBACKs
    # QoS 1 publications the broker never acknowledged: lost or stuck on the way in.
    unacked = pub.in_flight
    pub.close()
    emit(sent=sent, bytes=nbytes, start=start, end=end, cpu=cpu(), unacked=unacked)


# -- latency subscriber ----------------------------------------------------------------------------------
def latsub(args: argparse.Namespace) -> None:
    """Collect now - t for every echoed event with seq >= warmup until ``count`` arrived or ``idle`` s pass.

    The receiving is mosquitto's own C client (``mosquitto_sub -F '%U %p'``), which stamps each message with the
    time it took it off the socket; this process only parses its lines. A paho subscriber took a fifth of a core
    at 5,000 events/s from the 2 cores the agent under test shares with it, and counted its own callback delays
    as latency.
    """
    lat: list[float] = []
    n = 0
    # --per-events N: latencies grouped by seq // N, i.e. by the interval of the publisher's schedule the event
    # was due in (pace sends seq at start + seq / rate), so every interval holds exactly N events and a run's
    # last events, sent a little late, do not make a bucket of their own. Only each interval's summary is kept
    # once it is over, so that a 30-minute soak does not hold millions of samples.
    buckets: dict[int, list[float]] = {}
    summaries: dict[int, dict[str, float]] = {}

    def close_buckets(before: int) -> None:
        for index in [i for i in buckets if i < before]:
            values = buckets.pop(index)
            values.sort()
            summaries[index] = {
                "count": len(values),
                "p50_ms": round(values[len(values) // 2] * 1000, 3),
                "p99_ms": round(values[max(0, round(0.99 * len(values) + 0.5) - 1)] * 1000, 3),
                "max_ms": round(values[-1] * 1000, 3),
            }

    def on_line(line: bytes) -> None:
        nonlocal n
        stamp, _, payload = line.partition(b" ")
        body = orjson.loads(payload)
        if "seq" not in body:  # the readiness marker
            return
        n += 1
        latency = float(stamp) - body["t"]
        if body["seq"] < args.warmup:
            return
        if not args.per_events:
            lat.append(latency)
            return
        index = body["seq"] // args.per_events
        closed = summaries.get(index)
        if closed is not None:  # an interval late: counted in its interval's count and maximum
            closed["count"] += 1
            closed["max_ms"] = max(closed["max_ms"], round(latency * 1000, 3))
            return
        buckets.setdefault(index, []).append(latency)
        if len(buckets) > 2:
            close_buckets(index - 1)

    with StampedLines(args.port, args.topic) as lines:
        lines.wait_ready()
        emit(ready=True)
        last = time.monotonic()
        while n < args.count and time.monotonic() - last < args.idle:
            got = lines.read(0.05)
            if got:
                last = time.monotonic()
            for line in got:
                on_line(line)
    if args.per_events:
        close_buckets(1 << 62)
        emit(received=n, per=[{"index": i, **summaries[i]} for i in sorted(summaries)])
        return
    emit(received=n, latencies_ms=[round(x * 1000, 3) for x in lat])


class StampedLines:
    """``mosquitto_sub`` on ``topic`` printing "<receipt time> <payload>" lines; ``read`` returns those that came."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        # A topic the subscription matches, for the readiness marker (mosquitto_sub says nothing once subscribed).
        self.marker_topic = topic[:-1] + "latsub-ready" if topic.endswith("#") else topic
        self._proc: subprocess.Popen[bytes] | None = None
        self._rest = b""
        self._selector = selectors.DefaultSelector()

    def __enter__(self) -> StampedLines:
        command = ["mosquitto_sub", "-h", HOST, "-p", str(self.port), "-t", self.topic, "-q", "0", "-F", "%U %p"]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._selector.register(self._proc.stdout.fileno(), selectors.EVENT_READ)
        return self

    def __exit__(self, *exc: object) -> None:
        self._selector.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def read(self, timeout: float) -> list[bytes]:
        """Complete lines that arrived within ``timeout`` (empty when none did)."""
        assert self._proc is not None
        assert self._proc.stdout is not None
        if not self._selector.select(timeout):
            return []
        chunk = b""
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(self._proc.stdout.fileno(), 1 << 20)
        if not chunk:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto_sub exited with {self._proc.returncode}")
            return []
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        return lines

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Publish a marker until mosquitto_sub prints it: from then on, it receives what the publisher sends."""
        client = paho_client(3)
        client.connect(HOST, self.port)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                client.publish(self.marker_topic, b'{"ready":true}', 0)
                client.loop(0.01)
                for line in self.read(0.1):
                    if b'"ready"' in line:
                        return
            raise TimeoutError(f"mosquitto_sub on {self.topic} received nothing in {timeout:g}s")
        finally:
            client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.clients")
    sub = parser.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("sub")
    s.add_argument("--lib", choices=["paho", "aiomqtt"], required=True)
    s.add_argument("--mqtt", type=int, choices=[3, 5], default=3, help="protocol: 3.1.1 (both libraries' default) or 5")
    s.add_argument("--session", choices=["create", "resume"], help="a preloaded persistent session (paho only)")
    s.add_argument("--client-id", default="bench-preload")
    p = sub.add_parser("pace")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--at", type=float, default=0.0, help="epoch time to start at (default: once connected)")
    agg = sub.add_parser("aggsub")
    agg.add_argument("--mqtt", type=int, choices=[3, 5], default=5)
    agg.add_argument("--idle", type=float, default=10.0, help="stop when nothing came for this long")
    lat = sub.add_parser("latsub")
    lat.add_argument("--warmup", type=int, default=0, help="ignore events with a lower seq")
    lat.add_argument("--idle", type=float, default=3.0)
    lat.add_argument("--per-events", type=int, default=0, help="summaries per this many events of the schedule (seq)")
    for each in (s, p, lat, agg):
        each.add_argument("--port", type=int, required=True)
        each.add_argument("--topic", required=True)
        each.add_argument("--qos", type=int, default=0)
    for each in (s, lat, agg):
        each.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "sub":
        if args.lib == "paho":
            sub_paho(args)
        else:
            asyncio.run(_sub_aiomqtt(args))
    elif args.kind == "pace":
        pace(args)
    elif args.kind == "aggsub":
        aggsub(args)
    else:
        latsub(args)


if __name__ == "__main__":
    sys.exit(main())
