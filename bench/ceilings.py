"""Raw ceilings of this machine, measured in the same run as the agent: bare subscribers and the container pipe."""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker

from bench.procs import Helper, device_broker_limits, percentile, publish_burst
from edge_agent.runtime.containers import SOCKET_NAME, hardened_create_args
from edge_protocol.handler_io import encode_event
from edge_protocol.specs import HandlerSpec
from scripts.mosquitto import Mosquitto

_HEADER = struct.Struct(">BxxxI")


def bare_subscriber(
    lib: str, qos: int, count: int, mqtt_version: int = 3, *, preload: bool | None = None
) -> dict[str, Any]:
    """A counting subscriber (own process) on a burst from the C publisher into a fresh mosquitto with the
    shipped device broker's limits (configs/mosquitto/device.conf).

    Live (the default at QoS 0): the rate runs from the publisher's start to the subscriber's last message, as for
    the agent; it cannot exceed the publisher's, which is reported beside it. ``preload`` (the default at QoS 1,
    paho only): the subscriber opens a persistent session and leaves, the burst waits in the broker's queue for it,
    and the subscriber comes back and drains it, timed from its CONNECT to its last message: the publisher is not
    in the figure (``mosquitto_pub -q 1`` publishes 8,000-19,000 msg/s here, less than a subscriber drains).
    """
    if preload is None:
        preload = qos == 1 and lib == "paho"
    topic = f"bench/ceiling/{lib}/q{qos}"
    args = ["--lib", lib, "--mqtt", str(mqtt_version), "--qos", str(qos), "--count", str(count)]
    limits = device_broker_limits(min_queued=count)
    with Mosquitto(extra_config=limits) as broker:
        base = ["sub", "--port", str(broker.port), "--topic", topic, *args]
        if not preload:
            with Helper(*base) as sub:
                ready = sub.read(timeout=15)
                start, pub_end, nbytes = publish_burst(broker.host, broker.port, topic, count, qos)
                done = sub.read(timeout=30 + count / 2000)
        else:
            client_id = f"bench-preload-{lib}-q{qos}"
            with Helper(*base, "--session", "create", "--client-id", client_id) as created:
                created.read(timeout=15)
                created.proc.wait(15)
            pub_start, pub_end, nbytes = publish_burst(broker.host, broker.port, topic, count, qos, parallel=True)
            with Helper(*base, "--session", "resume", "--client-id", client_id) as sub:
                ready = sub.read(timeout=15)
                done = sub.read(timeout=30 + count / 2000)
            start = ready["connect"]
            if not done.get("session_present"):
                raise RuntimeError("the broker kept no session for the preloaded subscriber")
    elapsed = done["last"] - start
    return {
        "events": count,
        "seconds": round(elapsed, 3),
        "rate": count / elapsed,
        "cpu_per_event_us": (done["cpu"] - ready["cpu"]) / count * 1e6,
        "publisher_rate": count / (pub_end - (pub_start if preload else start)),
        "payload_bytes": nbytes,
        "mode": "preload" if preload else "live",
    }


def _count_lines(sock: socket.socket, want: int, stop: threading.Event, attached: bool) -> tuple[int, float]:
    """Read until ``want`` lines arrived (stdout's, of an attach stream); (lines, time of the last)."""
    buf = bytearray()
    lines = 0
    last = time.time()
    while lines < want and not stop.is_set():
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        last = time.time()
        if not attached:
            lines += chunk.count(b"\n")
            continue
        buf += chunk
        pos = 0
        while len(buf) - pos >= 8:
            stream, size = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 8 < size:
                break
            if stream == 1:
                lines += buf.count(b"\n", pos + 8, pos + 8 + size)
            pos += 8 + size
        del buf[:pos]
    return lines, last


def _hardened(device_id: str, image: str, io_dir: Path | None) -> dict[str, Any]:
    """The create arguments the agent's runtime gives a handler with a HandlerSpec's default limits (the hardening
    of docs/security.md), so that the pipe measured is the one the agent runs; with ``io_dir``, over its socket."""
    spec = HandlerSpec(name="ceiling", image=image, io="socket" if io_dir is not None else "stdio")
    return hardened_create_args(spec, device_id=device_id, replica=0, generation="bench", io_dir=io_dir)


def container_echo(
    client: docker.DockerClient, device_id: str, lines: int, batch: int = 500, *, via: str = "attach"
) -> dict[str, Any]:
    """edgefleet/passthrough:dev, hardened as the agent runs it: JSON lines written and read back, pipelined,
    through the engine's attach stream (``via="attach"``) or over a unix socket the container connects to
    (``via="socket"``, as the agent's default ``io``)."""
    io_dir = Path(tempfile.mkdtemp(prefix="edgefleet-io-"))
    args = _hardened(device_id, "edgefleet/passthrough:dev", io_dir if via == "socket" else None)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if via == "socket":
        io_dir.chmod(0o711)
        server.bind(str(io_dir / SOCKET_NAME))
        (io_dir / SOCKET_NAME).chmod(0o666)
        server.listen(1)
        server.settimeout(30)
    container = client.containers.create(**args)
    try:
        if via == "socket":
            container.start()
            sock, _ = server.accept()
        else:
            attached = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            sock = getattr(attached, "_sock", attached)
            container.start()
        sock.settimeout(30)
        demux = via == "attach"
        events = [
            encode_event(i, "bench/ceiling/t", {"seq": i, "temp": 18.0 + (i % 700) / 100}, time.time())
            for i in range(lines)
        ]
        chunks = [b"".join(events[i : i + batch]) for i in range(0, lines, batch)]
        # Warm up (the interpreter's start inside the container is not the pipe's speed).
        sock.sendall(chunks[0])
        stop = threading.Event()
        _count_lines(sock, min(batch, lines), stop, demux)

        def write() -> None:
            for chunk in chunks:
                sock.sendall(chunk)

        writer = threading.Thread(target=write, name="bench.echo-writer", daemon=True)
        start = time.time()
        writer.start()
        got, last = _count_lines(sock, lines, stop, demux)
        writer.join(10)
        elapsed = last - start
        return {"lines": got, "seconds": round(elapsed, 3), "rate": got / elapsed, "batch": batch, "via": via}
    finally:
        container.remove(force=True)
        server.close()
        shutil.rmtree(io_dir, ignore_errors=True)


def bare_latency(rate: float, seconds: float, warmup: float = 1.0) -> dict[str, Any]:
    """The latency probe without the agent: paced publisher -> mosquitto -> timing subscriber (one hop)."""
    total, skip = int(rate * seconds), int(rate * warmup)
    with (
        Mosquitto() as broker,
        Helper(
            "latsub", "--port", str(broker.port), "--topic", "bench/out/#", "--count", str(total), "--warmup", str(skip)
        ) as sub,
    ):
        sub.read(timeout=15)
        with Helper(
            "pace",
            "--port",
            str(broker.port),
            "--topic",
            "bench/out/lat",
            "--qos",
            "1",
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ) as pub:
            pub.read(timeout=15)
            sent = pub.read(timeout=seconds * 3 + 30)
        got = sub.read(timeout=30)
    lat: list[float] = got["latencies_ms"]
    return {
        "rate": rate,
        "sent": sent["sent"],
        "received": got["received"],
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat, default=float("nan")),
    }
