"""MQTT clients of the tests: publishers (all at once or paced), subscribers collecting dead letters or the
windows a device sends, ``$SYS`` figures."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import paho.mqtt.client as mqtt

from edge_protocol.deadletter import DeadLetter
from scripts.mosquitto import Mosquitto

T = TypeVar("T")


def _client(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    return client


class Subscriber(Generic[T]):
    """A subscriber collecting, in ``records``, what ``parse`` makes of each message on ``topic`` (at QoS 1),
    subscribed once constructed; a context manager that closes it. Its broker must stay up while it records."""

    def __init__(self, broker: Mosquitto, topic: str, parse: Callable[[bytes | bytearray], Iterable[T]]) -> None:
        self.records: list[T] = []
        self._parse = parse
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = _client(broker)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError(f"the broker did not confirm the subscription to {topic}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = list(self._parse(msg.payload))
        with self._lock:
            self.records.extend(parsed)

    def received(self) -> list[T]:
        """A copy of the records so far."""
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dead_letters(broker: Mosquitto, prefix: str) -> Subscriber[DeadLetter]:
    """The dead-letter records of one prefix on the device broker."""
    return Subscriber(broker, f"{prefix}/deadletter/#", lambda payload: [DeadLetter.model_validate_json(payload)])


def dead_letter_reasons(letters: Subscriber[DeadLetter]) -> dict[bytes, str]:
    """Each dead-lettered payload -> the reason it was dead-lettered."""
    return {r.payload_bytes(): r.reason for r in letters.received()}


def broker_stat(broker: Mosquitto, topic: str, timeout: float = 10.0) -> int:
    """One of mosquitto's ``$SYS`` figures, e.g. ``$SYS/broker/store/messages/count`` (messages held for sessions,
    acknowledged ones excluded); the broker needs ``sys_interval`` set (``Mosquitto(extra_config=[...])``)."""
    got: list[int] = []
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(int(float(msg.payload)))
        ready.set()

    client = _client(broker)
    client.on_message = on_message
    client.subscribe(topic)
    client.loop_start()
    try:
        assert ready.wait(timeout), f"no {topic} from the broker within {timeout:g}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every message."""
    client = _client(broker)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published(), "the broker did not acknowledge a publication"
    finally:
        client.disconnect()
        client.loop_stop()


class PacedPublisher:
    """Publishes ``messages`` at QoS 1 at about ``rate`` per second from its own thread (the load generator).

    ``acked`` counts the broker's PUBACKs; ``done`` is set once every message is acknowledged. A stream that
    should last as long as the test needs ends with :meth:`finish`: the published messages are then
    ``messages[:issued]``.
    """

    def __init__(self, broker: Mosquitto, messages: list[tuple[str, bytes]], rate: float) -> None:
        self._messages = messages
        self._rate = rate
        self._client = _client(broker)
        self._client.on_publish = self._on_publish
        self.acked = 0
        self.issued = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test.publisher", daemon=True)

    def _on_publish(self, *_a: Any) -> None:
        self.acked += 1
        if self.acked >= len(self._messages):
            self.done.set()

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for i, (topic, payload) in enumerate(self._messages):
                if self._stop.is_set():
                    return
                ahead = started + i / self._rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the load, not synchronisation
                self._client.publish(topic, payload, qos=1)
                self.issued = i + 1
        except BaseException as exc:  # reported by the test through .error
            self.error = exc

    def finish(self, timeout: float = 30.0) -> int:
        """Stop publishing and wait until the broker acknowledged everything issued; returns how many were."""
        self._stop.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.acked < self.issued and time.monotonic() < deadline:
            time.sleep(0.05)  # polling paho's thread, which counts the PUBACKs
        assert self.acked == self.issued, f"the broker acknowledged {self.acked} of {self.issued} messages"
        return self.issued

    def __enter__(self) -> PacedPublisher:
        self._client.loop_start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.disconnect()
        self._client.loop_stop()


def sent_windows(broker: Mosquitto, prefix: str, device: str) -> Subscriber[dict[str, Any]]:
    """Every window result a device sends (resends included), as JSON, recorded on the cloud broker to compare
    what the hub stored with what was sent (:func:`tests.support.readers.assert_stored_as_held`)."""
    return Subscriber(broker, f"{prefix}/devices/{device}/aggregates", _window_results)


def _window_results(payload: bytes | bytearray) -> list[dict[str, Any]]:
    return [record["result"] for record in json.loads(payload)["records"]]
