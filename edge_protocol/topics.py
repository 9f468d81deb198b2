"""Topic names on the cloud broker and the device broker, built and parsed in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_PREFIX = "edgefleet"

DeviceChannel = Literal["status", "reported", "aggregates", "desired", "acks"]
DEVICE_CHANNELS: tuple[DeviceChannel, ...] = ("status", "reported", "aggregates", "desired", "acks")


def _check_segment(value: str, what: str) -> str:
    if not value or any(ch in value for ch in "/+#\x00"):
        raise ValueError(f"{what} {value!r} must be non-empty without '/', '+', '#'")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (default ``edgefleet``)."""

    prefix: str = DEFAULT_PREFIX

    def device(self, device_id: str, channel: DeviceChannel) -> str:
        return f"{self.prefix}/devices/{_check_segment(device_id, 'device id')}/{channel}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def reported(self, device_id: str) -> str:
        return self.device(device_id, "reported")

    def aggregates(self, device_id: str) -> str:
        return self.device(device_id, "aggregates")

    def desired(self, device_id: str) -> str:
        return self.device(device_id, "desired")

    def acks(self, device_id: str) -> str:
        return self.device(device_id, "acks")

    def all_devices(self, channel: DeviceChannel) -> str:
        """Filter matching ``channel`` of every device."""
        return f"{self.prefix}/devices/+/{channel}"

    def shared(self, channel: DeviceChannel, group: str = "hub") -> str:
        """Shared-subscription filter so that several hub replicas split one channel's load."""
        return f"$share/{group}/{self.all_devices(channel)}"

    def deadletter(self, subscription: str) -> str:
        """Device-broker topic where a subscription's rejected events go."""
        return f"{self.prefix}/deadletter/{_check_segment(subscription, 'subscription')}"

    def parse_device(self, topic: str) -> tuple[str, DeviceChannel] | None:
        """``(device_id, channel)`` for a device topic under this prefix, else None."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or not rest[0] or rest[1] not in DEVICE_CHANNELS:
            return None
        return rest[0], rest[1]  # type: ignore[return-value,unused-ignore]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); ``$`` topics never match wildcards at the root."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def validate_filter(topic_filter: str) -> str:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT subscription filter."""
    if not topic_filter:
        raise ValueError("a topic filter cannot be empty")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if "#" in part and (part != "#" or i != len(parts) - 1):
            raise ValueError(f"'#' must be a whole last level in {topic_filter!r}")
        if "+" in part and part != "+":
            raise ValueError(f"'+' must be a whole level in {topic_filter!r}")
    return topic_filter
