"""Forwards outbox records to the cloud broker and deletes them when the hub acknowledges storing them.

A broker's PUBACK is not enough (the broker may lose what it acknowledged), so a record stays in the outbox
until the hub's own Ack names its sequence; records unacknowledged for ``resend_after`` are sent again. The
hub stores by window id, so a resend is harmless. A record the Ack names as refused (``conflict``: the hub
holds its window id with other content) will never be stored: it leaves the outbox into the loss ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from edge_agent import __version__
from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox
from edge_protocol.aggregate import WindowResult
from edge_protocol.messages import CLOUD_MESSAGE, Ack, AggregateBatch, SequencedResult, Status
from edge_protocol.topics import Topics
from mqtt_session import MqttSession, SessionError

log = logging.getLogger(__name__)


def status_payload(device_id: str, online: bool) -> bytes:
    return Status(device=device_id, online=online, agent_version=__version__, ts=time.time()).model_dump_json().encode()


class Uplink:
    """The agent's side of the cloud link: status, aggregates out, acks in."""

    def __init__(
        self,
        *,
        cloud: MqttSession,
        outbox: Outbox,
        device_id: str,
        topics: Topics,
        batch_records: int = 200,
        max_unacked: int = 2000,
        resend_after: float = 15.0,
        reporter: Callable[[], Awaitable[bytes]] | None = None,
        report_interval: float = 10.0,
        on_desired: Callable[[bytes], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_pause: float = 1.0,
    ) -> None:
        self._cloud = cloud
        self._outbox = outbox
        self._device = device_id
        self._topics = topics
        self._batch = batch_records
        self._max_unacked = max_unacked
        self._resend_after = resend_after
        self._clock = clock
        self._retry_pause = retry_pause
        self._reporter = reporter
        self._report_interval = report_interval
        self._on_desired = on_desired
        self._report_now = asyncio.Event()
        self._sent_through = 0
        self._unacked: dict[int, float] = {}
        self._wake = asyncio.Event()
        self.sent = 0
        self.acked = 0
        self.refused = 0
        """Records the hub refused (conflicts), given up into the loss ledger."""
        self.resends = 0
        self.invalid_messages = 0
        cloud.add_connect_hook(self._on_connect)

    async def run(self) -> None:
        for topic in self._subscriptions():
            await self._cloud.subscribe(topic, qos=1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._cloud.run(), name="agent.uplink.session")
            tg.create_task(self._receive_loop(), name="agent.uplink.receive")
            tg.create_task(self._send_loop(), name="agent.uplink.send")
            if self._reporter is not None:
                tg.create_task(self._report_loop(), name="agent.uplink.report")

    def _subscriptions(self) -> list[str]:
        topics = [self._topics.acks(self._device)]
        if self._on_desired is not None:
            topics.append(self._topics.desired(self._device))
        return topics

    @property
    def connected(self) -> bool:
        """Connected to the cloud broker, subscribed, and the online status announced."""
        return self._cloud.connected

    def report_soon(self) -> None:
        """Publish the reported state now rather than at the next interval (something changed)."""
        self._report_now.set()

    async def _report_loop(self) -> None:
        assert self._reporter is not None
        while True:
            await self._cloud.wait_connected()
            self._report_now.clear()
            try:
                payload = await self._reporter()
                await self._cloud.publish(self._topics.reported(self._device), payload, retain=True)
            except SessionError as exc:
                log.warning("reported state not sent: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._report_interval):
                    await self._report_now.wait()

    async def _on_connect(self) -> None:
        # Runs on each connection before wait_connected() returns: the online status goes before any data.
        # Whatever was in flight on the old connection may be lost: send every unacked record again.
        self._sent_through = 0
        self._unacked.clear()
        self._wake.set()
        await self._cloud.publish(self._topics.status(self._device), status_payload(self._device, True), retain=True)
        self._report_now.set()

    async def announce_offline(self) -> None:
        """Retained offline status on a clean shutdown (the MQTT will covers the unclean one); a broker that
        does not answer within 2 s must not hold up the shutdown."""
        with contextlib.suppress(SessionError, TimeoutError):
            async with asyncio.timeout(2):
                payload = status_payload(self._device, False)
                await self._cloud.publish(self._topics.status(self._device), payload, retain=True)

    async def _receive_loop(self) -> None:
        async with contextlib.aclosing(self._cloud.messages()) as messages:
            async for message in messages:
                await self._on_message(message.topic, message.payload)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if self._on_desired is not None and topic == self._topics.desired(self._device):
            await self._on_desired(payload)
            return
        try:
            msg = CLOUD_MESSAGE.validate_json(payload)
        except ValidationError as exc:
            self.invalid_messages += 1
            log.warning("ignored invalid message on %s: %s", topic, exc.errors()[0]["msg"] if exc.errors() else exc)
            return
        if not isinstance(msg, Ack) or msg.device != self._device:
            self.invalid_messages += 1
            log.warning("ignored unexpected %s message on %s", msg.kind, topic)
            return
        try:
            deleted = await self._outbox.delete(msg.ranges) if msg.ranges else 0
            given_up = await self._outbox.refuse([(r.seq, r.reason) for r in msg.refused]) if msg.refused else 0
        except OutboxError as exc:
            log.error("acked records not deleted (they will be sent again): %s", exc)
            return
        self.acked += deleted
        self.refused += given_up
        for refusal in msg.refused:
            self._unacked.pop(refusal.seq, None)
            log.error("the hub refused record %d (%s): counted lost", refusal.seq, refusal.reason)
        for lo, hi in msg.ranges:
            if hi - lo < len(self._unacked):
                for seq in range(lo, hi + 1):
                    self._unacked.pop(seq, None)
            else:
                for seq in [s for s in self._unacked if lo <= s <= hi]:
                    del self._unacked[seq]
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._cloud.wait_connected()
            self._wake.clear()
            self._outbox.new_records.clear()
            records: list[tuple[int, bytes]] = []
            room = self._max_unacked - len(self._unacked)
            if room > 0:
                records = await self._outbox.fetch(self._sent_through, min(room, self._batch))
            if records:
                try:
                    await self._send(records)
                except SessionError as exc:
                    log.warning("aggregates not sent: %s", exc)
                    await self._after_failed_send()
                continue
            oldest = next(iter(self._unacked.values()), None)
            timeout = None
            if oldest is not None:
                timeout = oldest + self._resend_after - self._clock()
                if timeout <= 0:
                    log.info("hub has not acked %d records; sending them again", len(self._unacked))
                    self.resends += 1
                    self._sent_through = 0
                    self._unacked.clear()
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await _wait_any([self._wake, self._outbox.new_records])

    async def _after_failed_send(self) -> None:
        """A lost connection: the loop waits for the next one (its connect hook sends every unacked record
        again). A failure on a connection still counted up (no PUBACK in time, a publish refused at once):
        ``retry_pause`` first, or the loop would try again at once, and a publish that fails without yielding
        would spin it, logging each turn and starving the task that would notice the loss."""
        if self._cloud.connected:
            await asyncio.sleep(self._retry_pause)

    async def _send(self, records: list[tuple[int, bytes]]) -> None:
        batch = AggregateBatch(
            device=self._device,
            sent_at=time.time(),
            records=[SequencedResult(seq=seq, result=WindowResult.model_validate_json(body)) for seq, body in records],
        )
        await self._cloud.publish(self._topics.aggregates(self._device), batch.model_dump_json().encode(), qos=1)
        now = self._clock()
        for seq, _ in records:
            self._unacked.pop(seq, None)
            self._unacked[seq] = now
        self._sent_through = records[-1][0]
        self.sent += len(records)


async def _wait_any(events: list[asyncio.Event]) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
