"""containers/sdk/edge_handler.py over real pipes, run by the host python as a handler process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SDK_DIR = REPO / "containers" / "sdk"
HANDLERS_DIR = REPO / "containers" / "handlers"
TIMEOUT = 10

HANDLER = textwrap.dedent(
    """
    import sys
    from edge_handler import HandlerResult, Publish, run

    def handle(event):
        p = event.payload
        if p == "raise":
            raise KeyError("boom")
        if p == "long":
            raise ValueError("x" * 5000)
        if p == "none":
            return None
        if p == "nan":
            return {"v": float("nan")}
        if p == "object":
            return {"v": object()}
        if p == "list":
            return [1]
        if p == "publish":
            return HandlerResult({"n": 1}, publish=[Publish("alerts/" + event.topic, {"ts": event.ts})])
        if p == "publish-durable":
            return HandlerResult(None, publish=[Publish("a", 1, qos=1), Publish("b", 2, retain=True)])
        print("log line for", event.id, file=sys.stderr)
        return {"double": p * 2, "topic": event.topic, "ts": event.ts}

    run(handle)
    """
)


@contextlib.contextmanager
def _spawn(script: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The handler as a child process with piped stdio; killed and reaped however the test ends."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SDK_DIR), **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)  # reaps and closes the pipes


def _talk(script: Path, lines: list[Any], env: dict[str, str] | None = None) -> tuple[list[Any], str]:
    """Send every line at once (as the agent batches), close stdin; replies and stderr after a clean exit."""
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    with _spawn(script, env) as proc:
        out, err = proc.communicate(data, timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.splitlines()], err.decode()


@pytest.fixture
def handler(tmp_path: Path) -> Path:
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    return script


def _event(i: int, payload: Any, topic: str = "s/1") -> dict[str, Any]:
    return {"kind": "event", "id": i, "topic": topic, "payload": payload, "ts": 10.5}


def test_results_for_a_batch_in_order(handler: Path) -> None:
    replies, err = _talk(handler, [_event(i, i) for i in range(1000)])
    assert replies == [
        {"kind": "result", "id": i, "values": {"double": 2 * i, "topic": "s/1", "ts": 10.5}} for i in range(1000)
    ]
    assert err.count("log line for") == 1000  # stderr is the log, apart from the protocol


def test_none_publish_and_pong(handler: Path) -> None:
    replies, _ = _talk(handler, [_event(1, "none"), _event(2, "publish", "x"), {"kind": "ping", "id": 3}])
    assert replies == [
        {"kind": "result", "id": 1, "values": {}},
        {"kind": "result", "id": 2, "values": {"n": 1}, "publish": [{"topic": "alerts/x", "payload": {"ts": 10.5}}]},
        {"kind": "pong", "id": 3},
    ]


def test_publish_qos_and_retain_only_when_asked(handler: Path) -> None:
    replies, _ = _talk(handler, [_event(1, "publish-durable")])
    assert replies == [{"kind": "result", "id": 1, "values": {}, "publish": [
        {"topic": "a", "payload": 1, "qos": 1},
        {"topic": "b", "payload": 2, "retain": True},
    ]}]


def test_raising_handler_gives_error_reply_and_keeps_serving(handler: Path) -> None:
    replies, _ = _talk(handler, [_event(1, "raise"), _event(2, "long"), _event(3, 4)])
    assert replies[0] == {"kind": "error", "id": 1, "error": "KeyError: 'boom'"}
    assert replies[1]["kind"] == "error"
    assert replies[1]["error"].startswith("ValueError: xxx")
    assert len(replies[1]["error"]) == 500
    assert replies[2]["values"]["double"] == 8


@pytest.mark.parametrize("payload", ["nan", "object", "list"])
def test_unserialisable_or_wrong_return_gives_error(handler: Path, payload: str) -> None:
    replies, _ = _talk(handler, [_event(7, payload)])
    assert replies[0]["kind"] == "error"
    assert replies[0]["id"] == 7


def test_bad_lines_get_errors_with_id_when_readable(handler: Path) -> None:
    lines: list[Any] = [
        b"this is not json",
        b"\xff\xfe",
        [1, 2],
        {"kind": "bogus", "id": 5},
        {"kind": "event", "id": 6},  # no topic
        _event(8, 1),
    ]
    replies, _ = _talk(handler, lines)
    assert [(r["kind"], r["id"]) for r in replies] == [
        ("error", None),
        ("error", None),
        ("error", None),
        ("error", 5),
        ("error", 6),
        ("result", 8),
    ]
    assert "unknown kind 'bogus'" in replies[3]["error"]


def test_lines_split_across_writes_and_last_line_without_newline(handler: Path) -> None:
    data = json.dumps(_event(1, 1)).encode() + b"\n" + json.dumps(_event(2, 2)).encode()
    with _spawn(handler) as proc:
        assert proc.stdin is not None
        for i in range(len(data)):  # one byte per write: replies must not depend on chunk boundaries
            proc.stdin.write(data[i : i + 1])
            proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["id"] for line in out.splitlines()] == [1, 2]


def test_eof_exits_zero_without_output(handler: Path) -> None:
    replies, _ = _talk(handler, [])
    assert replies == []


def test_sigterm_exits_promptly(handler: Path) -> None:
    # As PID 1 in a container, the handler would ignore SIGTERM without the SDK's own handler.
    with _spawn(handler) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps({"kind": "ping", "id": 1}).encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"kind": "pong", "id": 1}  # serving: handler installed
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert time.monotonic() - started < 5


def test_temp_c_handler_converts_and_rejects() -> None:
    lines = [_event(1, 212), _event(2, {"f": 32}), _event(3, {"f": "hot"}), _event(4, True), _event(5, 86.0)]
    replies, _ = _talk(HANDLERS_DIR / "temp-c" / "handler.py", lines, env={"THRESHOLD_C": "29.5"})
    assert replies[0]["values"] == {"c": 100.0, "hot": True, "v": 1}
    assert replies[1]["values"] == {"c": 0.0, "hot": False, "v": 1}
    assert replies[2]["kind"] == replies[3]["kind"] == "error"
    assert replies[2]["error"].startswith("ValueError: expected a number of degrees Fahrenheit")
    assert replies[4]["values"] == {"c": 30.0, "hot": True, "v": 1}


def test_passthrough_handler_keeps_numbers_only() -> None:
    lines = [_event(1, 2.5), _event(2, {"a": 1, "b": "x", "c": False, "d": 3.5}), _event(3, "text")]
    replies, _ = _talk(HANDLERS_DIR / "passthrough" / "handler.py", lines)
    assert [r["values"] for r in replies] == [{"value": 2.5}, {"a": 1, "d": 3.5}, {}]


def test_speaks_on_the_agents_socket_when_one_is_named(handler: Path, tmp_path: Path) -> None:
    """With $EDGEFLEET_HANDLER_SOCKET set, the protocol runs over that socket and stdout stays unused; the
    handler exits 0 when the agent closes its end."""
    path = tmp_path / "handler.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        server.settimeout(TIMEOUT)
        with _spawn(handler, {"EDGEFLEET_HANDLER_SOCKET": str(path)}) as proc:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                lines = [_event(1, 2), {"kind": "ping", "id": 2}]
                conn.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
                conn.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert out == b""
    assert [json.loads(line) for line in data.splitlines()] == [
        {"kind": "result", "id": 1, "values": {"double": 4, "topic": "s/1", "ts": 10.5}},
        {"kind": "pong", "id": 2},
    ]
