"""The dynamic-security plugin's commands, ACLs and initial file, and the request/answer exchange on a fake bus."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from edge_protocol.topics import Topics
from hub.mqtt.fake import FakeBus
from hub.security.dynsec import (
    CONTROL,
    RESPONSE,
    Dynsec,
    DynsecError,
    device_acls,
    hash_password,
    hub_acls,
    provision_commands,
    revoke_commands,
    write_initial,
)

TOPICS = Topics("fleet")


def test_passwords_hash_as_mosquitto_ctrl_does() -> None:
    # From `mosquitto_ctrl dynsec init FILE admin adminpw` (mosquitto 2.0.11): its salt, count and hash.
    stored = hash_password("adminpw", iterations=101, salt=base64.b64decode("sZeF8sG91jMluntR"))
    assert stored == {
        "password": "JkxR4wRva4eLsPvMUSKLjKjN6cF1FP163r/Xy+SH5rqBcZ6aXn8alNw1NbzfHGUhUN7NVvEtWvhm2c9tX9I8Tw==",
        "salt": "sZeF8sG91jMluntR",
        "iterations": 101,
    }


def test_a_device_role_names_only_its_own_topics() -> None:
    acls = {(a["acltype"], a["topic"]) for a in device_acls(TOPICS, "dev-1")}
    assert acls == {
        ("publishClientSend", "fleet/devices/dev-1/status"),
        ("publishClientSend", "fleet/devices/dev-1/reported"),
        ("publishClientSend", "fleet/devices/dev-1/aggregates"),
        ("subscribeLiteral", "fleet/devices/dev-1/desired"),
        ("subscribeLiteral", "fleet/devices/dev-1/acks"),
        ("publishClientReceive", "fleet/devices/dev-1/desired"),
        ("publishClientReceive", "fleet/devices/dev-1/acks"),
    }


def test_the_hub_role() -> None:
    acls = {(a["acltype"], a["topic"]) for a in hub_acls(TOPICS)}
    assert ("subscribePattern", "$share/hub/fleet/devices/+/aggregates") in acls
    assert ("subscribePattern", "fleet/devices/+/status") in acls
    assert ("publishClientSend", "fleet/devices/+/desired") in acls
    assert ("publishClientSend", "fleet/devices/+/acks") in acls
    assert ("publishClientSend", CONTROL) in acls
    assert ("subscribeLiteral", RESPONSE) in acls
    assert not any(kind == "publishClientSend" and topic.endswith(("/status", "/aggregates")) for kind, topic in acls)


def test_the_initial_file_denies_by_default_and_holds_the_hub(tmp_path: Path) -> None:
    path = tmp_path / "dynsec.json"
    write_initial(path, TOPICS, "hub", "s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    (client,) = data["clients"]
    assert client["username"] == "hub"
    assert client["roles"] == [{"rolename": "hub"}]
    assert "s3cret" not in path.read_text()
    salt = base64.b64decode(client["salt"])
    assert hash_password("s3cret", iterations=client["iterations"], salt=salt)["password"] == client["password"]
    with pytest.raises(FileExistsError):
        write_initial(path, TOPICS, "hub", "other")


def test_revoking_takes_the_role_away_before_deleting_it() -> None:
    # mosquitto 2.0.11 crashes at the next ACL check of a client whose assigned role was deleted.
    assert [c["command"] for c in revoke_commands("d")] == ["disableClient", "removeClientRole", "deleteRole"]
    assert [c["command"] for c in provision_commands(TOPICS, "d", None)] == [
        "deleteClient",
        "deleteRole",
        "createRole",
        "createClient",
    ]
    assert "password" not in provision_commands(TOPICS, "d", None)[-1]
    assert provision_commands(TOPICS, "d", "pw")[-1]["password"] == "pw"


class AnsweringBus(FakeBus):
    """Answers each command batch on the response topic, after an unrelated answer (another admin's)."""

    def __init__(self, errors: dict[str, str] | None = None, *, silent: bool = False) -> None:
        super().__init__()
        self.errors = errors or {}
        self.silent = silent

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        await super().publish(topic, payload, qos=qos, retain=retain)
        if topic != CONTROL or self.silent:
            return
        commands: list[dict[str, Any]] = json.loads(payload)["commands"]
        self.inject(RESPONSE, json.dumps({"responses": [{"command": "listClients", "correlationData": "other"}]}))
        answers = []
        for cmd in reversed(commands):  # order does not matter: answers are matched by correlationData
            answer = {"command": cmd["command"], "correlationData": cmd["correlationData"]}
            if cmd["command"] in self.errors:
                answer["error"] = self.errors[cmd["command"]]
            answers.append(answer)
        self.inject(RESPONSE, json.dumps({"responses": answers}))


async def test_answers_are_matched_to_commands() -> None:
    bus = AnsweringBus({"deleteRole": "Role not found"})
    answers = await Dynsec(bus).run_checked(revoke_commands("d"))
    assert [(a.command, a.error) for a in answers] == [
        ("disableClient", None),
        ("removeClientRole", None),
        ("deleteRole", "Role not found"),
    ]
    assert bus.filters == {RESPONSE: 1}


async def test_refusals_and_silence_are_errors() -> None:
    with pytest.raises(DynsecError, match="createRole: Role already exists"):
        await Dynsec(AnsweringBus({"createRole": "Role already exists"})).run_checked(
            provision_commands(TOPICS, "d", None)
        )
    with pytest.raises(DynsecError, match="no answer"):
        await Dynsec(AnsweringBus(silent=True), timeout=0.1).run(revoke_commands("d"))

    class Disconnected(FakeBus):
        async def wait_connected(self) -> None:
            await asyncio.Event().wait()

    with pytest.raises(DynsecError, match="not connected"):
        await Dynsec(Disconnected(), timeout=0.1).run(revoke_commands("d"))
