"""Per-device authorization on the cloud broker: mosquitto's dynamic-security plugin, managed over MQTT.

Default deny for everything but unsubscribing. Role ``device-<id>`` lets a device publish only its own
``status``/``reported``/``aggregates`` and subscribe to (and receive) only its own ``desired``/``acks``; the
dynsec client named after the device id holds it (the TLS listener's ``use_identity_as_username`` makes the
certificate's CN the username). Role ``hub`` lets the hub's client consume every device's upstream channels
(aggregates through the shared subscription), publish desired state and acks, and send the plugin's commands.

Commands are JSON on ``$CONTROL/dynamic-security/v1``; the plugin answers on ``.../response`` to every
subscriber, so each command carries a ``correlationData`` and answers are matched by it. The initial plugin
file (``hub broker init-dynsec``) is written here directly: mosquitto_ctrl's format, PBKDF2-SHA512 hashes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_protocol.files import write_atomically
from edge_protocol.topics import Topics
from hub.errors import BrokerError
from hub.mqtt.broker import MessageBus

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = f"{CONTROL}/response"
HUB_ROLE = "hub"
DEFAULT_HUB_USERNAME = "hub"
PBKDF2_ITERATIONS = 100_000
"""For the hub's password in the initial file (mosquitto_ctrl uses 101; the plugin reads the count per client)."""

DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}
NOT_FOUND = frozenset({"Client not found", "Role not found"})


class DynsecError(BrokerError):
    """The plugin refused a command, or did not answer."""


def device_role(device_id: str) -> str:
    return f"device-{device_id}"


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True, "priority": 0}


def device_acls(topics: Topics, device_id: str) -> list[dict[str, Any]]:
    """What one device may do: publish its upstream channels, subscribe to and receive its downstream ones."""
    upstream = [topics.status(device_id), topics.reported(device_id), topics.aggregates(device_id)]
    downstream = [topics.desired(device_id), topics.acks(device_id)]
    return (
        [_acl("publishClientSend", t) for t in upstream]
        + [_acl("subscribeLiteral", t) for t in downstream]
        + [_acl("publishClientReceive", t) for t in downstream]
    )


def hub_acls(topics: Topics) -> list[dict[str, Any]]:
    """What the hub may do. mosquitto 2.0 checks a shared subscription's ACL on the whole ``$share/...`` filter."""
    upstream = [topics.all_devices(c) for c in ("aggregates", "status", "reported")]
    return (
        [_acl("subscribePattern", f) for f in (topics.shared("aggregates"), *upstream[1:])]
        + [_acl("publishClientReceive", t) for t in upstream]
        + [_acl("publishClientSend", topics.all_devices(c)) for c in ("desired", "acks")]
        + [_acl("publishClientSend", CONTROL), _acl("subscribeLiteral", RESPONSE)]
        + [_acl("publishClientReceive", RESPONSE)]
    )


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> dict[str, Any]:
    """The plugin's stored form of a password: PBKDF2-HMAC-SHA512 over a 12-byte salt, base64."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def initial_config(topics: Topics, hub_username: str, hub_password: str) -> dict[str, Any]:
    """The plugin's file: default deny, the hub's role and its client (what setDefaultACLAccess, createRole and
    createClient would make on a running broker)."""
    return {
        "defaultACLAccess": DEFAULT_ACCESS,
        "roles": [{"rolename": HUB_ROLE, "textname": "edgefleet hub", "acls": hub_acls(topics)}],
        "clients": [
            {
                "username": hub_username,
                "textname": "edgefleet hub",
                "roles": [{"rolename": HUB_ROLE}],
                **hash_password(hub_password),
            }
        ],
        "groups": [],
    }


def write_initial(path: Path, topics: Topics, hub_username: str, hub_password: str, *, force: bool = False) -> None:
    """Write the plugin's initial file (0600: it holds a password hash); FileExistsError unless ``force``."""
    if path.exists() and not force:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(initial_config(topics, hub_username, hub_password), indent=2)
    write_atomically(path, text.encode() + b"\n", 0o600)


def provision_commands(topics: Topics, device_id: str, password: str | None) -> list[dict[str, Any]]:
    """Replace whatever the plugin holds for ``device_id`` by a fresh role and client (a password only in
    password mode: with certificates the broker never asks for one). The client goes before its role (see
    :func:`revoke_commands`)."""
    role = device_role(device_id)
    client: dict[str, Any] = {"command": "createClient", "username": device_id, "roles": [{"rolename": role}]}
    if password is not None:
        client["password"] = password
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": role},
        {"command": "createRole", "rolename": role, "acls": device_acls(topics, device_id)},
        client,
    ]


def revoke_commands(device_id: str) -> list[dict[str, Any]]:
    """disableClient drops the live connection (DISCONNECT 0x98, administrative action) and refuses a password
    login; a certificate login is not a password check, so only taking the role away removes its rights.

    The role is removed from the client before it is deleted: mosquitto 2.0.11 crashes (SIGSEGV) at the next
    ACL check of a client whose role was deleted while still assigned to it."""
    role = device_role(device_id)
    return [
        {"command": "disableClient", "username": device_id},
        {"command": "removeClientRole", "username": device_id, "rolename": role},
        {"command": "deleteRole", "rolename": role},
    ]


@dataclass(frozen=True, slots=True)
class Answer:
    """The plugin's answer to one command."""

    command: str
    error: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def check(answers: Sequence[Answer], *, tolerate: frozenset[str] = NOT_FOUND) -> None:
    """DynsecError naming every refused command, except refusals listed in ``tolerate``."""
    failed = [f"{a.command}: {a.error}" for a in answers if a.error is not None and a.error not in tolerate]
    if failed:
        raise DynsecError("the dynamic-security plugin refused " + "; ".join(failed), topic=CONTROL)


class Dynsec:
    """Sends commands over ``bus`` and waits for their answers: ``await Dynsec(bus).run([...])``."""

    def __init__(self, bus: MessageBus, *, timeout: float = 10.0) -> None:
        self._bus = bus
        self._timeout = timeout
        self._subscribed = False

    async def run(self, commands: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Send ``commands`` in one message; their answers in the same order."""
        if not self._subscribed:
            await self._bus.subscribe(RESPONSE, qos=1)
            self._subscribed = True
        ids = [uuid.uuid4().hex for _ in commands]
        payload = {"commands": [{**cmd, "correlationData": cid} for cmd, cid in zip(commands, ids, strict=True)]}
        answers: dict[str, Answer] = {}
        connected = False
        try:
            async with asyncio.timeout(self._timeout):
                await self._bus.wait_connected()
                connected = True
                # Subscribed before publishing, so no answer can be missed.
                async with contextlib.aclosing(self._bus.messages()) as messages:
                    await self._bus.publish(CONTROL, json.dumps(payload).encode(), qos=1)
                    async for message in messages:
                        if message.topic == RESPONSE:
                            answers.update(_answers(message.payload, set(ids)))
                        if len(answers) == len(ids):
                            break
        except TimeoutError:
            if not connected:
                raise DynsecError(f"not connected to the broker within {self._timeout:g}s") from None
            raise DynsecError(
                f"no answer from the dynamic-security plugin within {self._timeout:g}s: is it loaded, and may "
                "this client use $CONTROL/dynamic-security/#?",
                topic=CONTROL,
            ) from None
        return [answers[cid] for cid in ids]

    async def run_checked(self, commands: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """:meth:`run`, raising DynsecError for any refusal but "not found"."""
        answers = await self.run(commands)
        check(answers)
        return answers


def _answers(payload: bytes, wanted: set[str]) -> dict[str, Answer]:
    try:
        responses = json.loads(payload).get("responses", [])
    except (ValueError, AttributeError):
        return {}
    found = {}
    for item in responses if isinstance(responses, list) else []:
        cid = item.get("correlationData") if isinstance(item, dict) else None
        if cid in wanted:
            found[cid] = Answer(str(item.get("command")), item.get("error"), item.get("data") or {})
    return found
