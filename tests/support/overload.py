"""The backpressure harness of tests/integration/test_backpressure.py: the agent as a process, paced load, its
reported state and memory, and the overload scenario those tests run.

The agent runs as its own process (``edge-agent run --config FILE``) so that its RSS (VmRSS in
/proc/<pid>/status) is its alone; its counters come from the reported state it publishes on the cloud broker
(no hub needed: nobody acknowledges its aggregates, which stay in its outbox). The overloaded subscription
``hot`` feeds the ``slow`` handler (DELAY_MS per event, so its capacity is known on any host); a second one,
``calm``, feeds passthrough at a low rate on the same agent, so that drops show per subscription.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_protocol.messages import Reported, SubscriptionReport
from edge_protocol.topics import Topics
from scripts.mosquitto import Mosquitto
from tests.support.toml import to_toml

REPO = Path(__file__).resolve().parents[2]
EDGE_AGENT = REPO / ".venv" / "bin" / "edge-agent"
RSS_SLACK_KB = 20 * 1024
CALM_RATE = 50.0  # events/s on the calm subscription, in both phases
MAX_OUTSTANDING = 30_000  # publisher-side QoS 1 messages not yet acknowledged by the broker


# -- the agent as a process ----------------------------------------------------------------------------------
class AgentProcess:
    """``edge-agent run --config FILE`` with a generated config, stopped with SIGTERM (SIGKILL as fallback)."""

    def __init__(self, config: dict[str, Any], data_dir: Path) -> None:
        self.config = config
        self.device_id = str(config["device_id"])
        self.data_dir = data_dir
        self.log_path = data_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "agent.toml"
        path.write_text(to_toml(self.config))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(EDGE_AGENT), "run", "--config", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if f"agent {self.device_id} running" in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"agent not running after {timeout:g}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def running(config: dict[str, Any], data_dir: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess(config, data_dir)
    try:
        yield agent.start()
    finally:
        agent.stop()


# -- load, state and memory -----------------------------------------------------------------------------------
class Paced(threading.Thread):
    """Publishes QoS 1 at ``rate`` events/s for ``seconds`` on ``topic``/<n mod 4>; ``sent`` once the broker
    acknowledged each one."""

    def __init__(self, broker: Mosquitto, topic: str, rate: float, seconds: float, start_seq: int = 0,
                 invalid_every: int = 0) -> None:
        super().__init__(name=f"paced[{topic}]", daemon=True)
        self.broker, self.topic, self.rate, self.seconds = broker, topic, rate, seconds
        self.invalid_every = invalid_every
        self.invalid = 0
        self.seq = start_seq
        self.sent = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(2000)
        client.max_queued_messages_set(0)
        try:
            client.connect(self.broker.host, self.broker.port)
            client.loop_start()
            infos = []
            total = int(self.rate * self.seconds)
            start = time.monotonic()
            n = 0
            while n < total:
                due = min(total, int((time.monotonic() - start) * self.rate) + 1)
                while n < due:
                    body = b'{"seq":%d,"temp":%.2f,"site":"plant-3","line":"packaging-2","ok":true}' % (
                        self.seq + n, 18.0 + n % 700 / 100)
                    if self.invalid_every and n % self.invalid_every == self.invalid_every - 1:
                        body = b"not json %d" % n  # a dead letter: a QoS 1 publication of the agent's
                        self.invalid += 1
                    infos.append(client.publish(f"{self.topic}/{n % 4}", body, qos=1))
                    n += 1
                    if n > MAX_OUTSTANDING:
                        # Packet ids wrap at 65535: never have more unacknowledged than that. A broker too slow
                        # for the rate shows as a rate below target, which the test checks.
                        infos[n - MAX_OUTSTANDING].wait_for_publish(timeout=60)
                time.sleep(max(0.0, min(0.005, start + n / self.rate - time.monotonic())))
            self.elapsed = time.monotonic() - start
            for info in infos:
                info.wait_for_publish(timeout=60)
                if not info.is_published():
                    raise AssertionError(f"publish {info.mid} not acknowledged by the broker")
            self.sent = len(infos)
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            client.disconnect()
            client.loop_stop()

    def result(self) -> int:
        self.join()
        if self.error is not None:
            raise self.error
        return self.sent


class ReportedState:
    """The agent's last retained reported state, from the cloud broker."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.last: Reported | None = None
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.last = Reported.model_validate_json(msg.payload)

    def progress(self) -> object:
        """The counters that move while the agent works (the report's timestamp does not count)."""
        return None if self.last is None else {n: s.model_dump() for n, s in self.last.subscriptions.items()}

    def sub(self, name: str) -> SubscriptionReport:
        assert self.last is not None
        return self.last.subscriptions[name]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class Memory:
    """VmRSS samples of the agent, by phase."""

    samples: dict[str, list[int]] = field(default_factory=dict)

    def sample(self, agent: AgentProcess, phase: str) -> None:
        self.samples.setdefault(phase, []).append(agent.rss_kb())

    def watch(self, agent: AgentProcess, phase: str, seconds: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            agent.check_alive()
            self.sample(agent, phase)
            time.sleep(interval)

    def peak(self, phase: str) -> int:
        return max(self.samples[phase])


def _settled(state: ReportedState, name: str, published: int) -> bool:
    if state.last is None or name not in state.last.subscriptions:
        return False
    s = state.sub(name)
    done = s.processed + s.dropped_overflow + sum(s.dead_lettered.values())
    return s.received == published and done == published and s.backlog == 0


class StalledError(AssertionError):
    """The agent's counters stood still while events were outstanding."""


def _wait(agent: AgentProcess, memory: Memory, phase: str, condition: Callable[[], bool], timeout: float,
          what: str, progress: Callable[[], object], stall: float = 30.0) -> float:
    """Seconds until ``condition`` held; fails on ``timeout``, or when ``progress()`` stands still for ``stall``
    seconds (a stuck agent), sampling RSS meanwhile."""
    started = last_change = time.monotonic()
    last = progress()
    while not condition():
        now = time.monotonic()
        current = progress()
        if current != last:
            last, last_change = current, now
        if now - last_change > stall:
            raise StalledError(f"no progress for {stall:g}s waiting for {what}: stuck at {current}")
        if now - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {current}")
        agent.check_alive()
        memory.sample(agent, phase)
        time.sleep(0.2)
    return time.monotonic() - started


# -- the scenario ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overload:
    overflow: str
    delay_ms: float  # the slow handler's time per event: capacity about 1000 / delay_ms events/s
    seconds: float  # how long the 10x overload lasts
    queue_size: int = 100
    normal_seconds: float = 5.0
    factor: float = 10.0
    invalid_every: int = 0  # every Nth overload event is not JSON: a dead letter, which the agent publishes QoS 1

    @property
    def capacity(self) -> float:
        return 1000.0 / self.delay_ms


def _config(load: Overload, device_id: str, data_dir: Path, device: Mosquitto, cloud: Mosquitto,
            prefix: str) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "data_dir": str(data_dir),
        "grace_period": 5,
        "local_broker": {"port": device.port},
        "cloud": {"port": cloud.port, "prefix": prefix, "report_interval": "1s", "reconnect_max": "2s"},
        "handlers": [
            # One reply per event reaches the agent only after the SDK answered the whole chunk: the timeout
            # must cover a full batch (queue_size x delay).
            {"name": "slow", "image": "edgefleet/slow:dev", "env": {"DELAY_MS": str(load.delay_ms)},
             "event_timeout": "60s"},
            {"name": "passthrough", "image": "edgefleet/passthrough:dev"},
        ],
        "subscriptions": [
            {"name": "hot", "topic": f"{prefix}/hot/+", "handler": "slow", "overflow": load.overflow,
             "queue_size": load.queue_size, "window": {"size": "1s"}},
            {"name": "calm", "topic": f"{prefix}/calm/+", "handler": "passthrough", "overflow": load.overflow,
             "queue_size": load.queue_size, "window": {"size": "1s"}},
        ],
    }


@dataclass
class Figures:
    published: dict[str, int]
    invalid: int  # of the hot events published, those that are not JSON
    hot: SubscriptionReport
    calm: SubscriptionReport
    rss_normal_kb: int
    rss_overload_kb: int
    overload_rate: float  # events/s the publisher reached on hot
    processed_rate: float  # events/s the hot handler got through from the overload's start to the last one
    drain_seconds: float

    def __str__(self) -> str:
        return (f"published={self.published} invalid={self.invalid} hot={self.hot.model_dump()} "
                f"calm={self.calm.model_dump()} rss normal={self.rss_normal_kb / 1024:.1f} MB "
                f"overload peak={self.rss_overload_kb / 1024:.1f} MB rate in={self.overload_rate:.0f}/s "
                f"processed={self.processed_rate:.0f}/s drain={self.drain_seconds:.1f}s")


def run_overload(load: Overload, *, device: Mosquitto, cloud: Mosquitto, device_id: str, prefix: str,
                 tmp_path: Path, drain_timeout: float) -> Figures:
    """Normal load, then the overload, then wait until the reported counters account for every event."""
    config = _config(load, device_id, tmp_path / "agent", device, cloud, prefix)
    state = ReportedState(cloud, Topics(prefix).reported(device_id))
    memory = Memory()
    try:
        with running(config, tmp_path / "agent") as agent:
            # Normal load: half the hot handler's capacity. The baseline is the RSS once it has run a while.
            normal = [Paced(device, f"{prefix}/hot", load.capacity / 2, load.normal_seconds),
                      Paced(device, f"{prefix}/calm", CALM_RATE, load.normal_seconds)]
            for p in normal:
                p.start()
            memory.watch(agent, "warm-up", load.normal_seconds / 2)
            memory.watch(agent, "normal", load.normal_seconds / 2)
            published = {"hot": normal[0].result(), "calm": normal[1].result()}
            _wait(agent, memory, "normal", lambda: all(_settled(state, n, published[n]) for n in published),
                  30, "the normal load processed", state.progress)
            before = state.sub("hot").processed
            t0 = time.monotonic()

            overload = [Paced(device, f"{prefix}/hot", load.capacity * load.factor, load.seconds, 10**6,
                              load.invalid_every),
                        Paced(device, f"{prefix}/calm", CALM_RATE, load.seconds, 10**6)]
            for p in overload:
                p.start()
            memory.watch(agent, "overload", load.seconds)
            sent = [p.result() for p in overload]
            overload_rate = sent[0] / max(overload[0].elapsed, 1e-9)
            published = {"hot": published["hot"] + sent[0], "calm": published["calm"] + sent[1]}
            drain = _wait(agent, memory, "overload",
                          lambda: all(_settled(state, n, published[n]) for n in published),
                          drain_timeout, f"every event accounted for ({published})", state.progress)
            # The handler's throughput under overload, from the start of the overload until the last event was
            # processed (the reported state lags by up to report_interval, 1 s).
            processed_rate = (state.sub("hot").processed - before) / (time.monotonic() - t0)
            agent.check_alive()
            figures = Figures(published, overload[0].invalid, state.sub("hot"), state.sub("calm"),
                              memory.peak("normal"), memory.peak("overload"), overload_rate, processed_rate, drain)
            print(figures)  # the figures, for -s and for the report
            return figures
    finally:
        state.close()


def check_overload_and_memory(figures: Figures, load: Overload) -> None:
    # The publisher really overloaded the handler: about 10x what it got through.
    assert figures.overload_rate >= 0.8 * load.factor * load.capacity, figures
    assert figures.overload_rate >= 5 * figures.processed_rate, figures
    # Memory under overload stays near its figure at normal load.
    assert figures.rss_overload_kb - figures.rss_normal_kb <= RSS_SLACK_KB, figures

