"""The CLI talks HTTP only: importing it loads neither the store, the crypto, the container runtime nor MQTT.

Checked in a fresh interpreter, since this test process has long since imported all of them. When a banned
package is loaded anyway, the probe names the chain of modules that imported it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

BANNED = ("sqlalchemy", "cryptography", "docker", "aiomqtt")

# Run in the child: a meta-path finder that sees the first import of each banned package and records the
# modules on the stack at that moment (the importer chain), then the modules loaded in the end.
_PROBE = textwrap.dedent(
    """
    import importlib, json, sys

    banned, targets = {banned!r}, {targets!r}
    chains = {{}}

    class Watch:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in banned and top not in chains:
                chain, frame = [], sys._getframe(1)
                while frame is not None:
                    module = frame.f_globals.get("__name__", "")
                    if not module.startswith(("importlib", "_frozen")) and module not in chain:
                        chain.append(module)
                    frame = frame.f_back
                chains[top] = chain
            return None

    sys.meta_path.insert(0, Watch())
    for target in targets:
        importlib.import_module(target)
    loaded = sorted({{name.partition(".")[0] for name in sys.modules}} & set(banned))
    print(json.dumps({{"loaded": loaded, "chains": {{name: chains.get(name, []) for name in loaded}}}}))
    """
)


def loaded_by(*targets: str, banned: tuple[str, ...] = BANNED) -> dict[str, list[str]]:
    """Banned packages that importing ``targets`` loads, each with its importer chain (innermost first)."""
    code = _PROBE.format(banned=banned, targets=targets)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    chains: dict[str, list[str]] = report["chains"]
    return chains


@pytest.mark.parametrize("module", ["hub.cli.app", "hub.cli.client"])
def test_the_cli_loads_no_storage_crypto_runtime_or_mqtt(module: str) -> None:
    loaded = loaded_by(module)
    why = "\n".join(f"{name}: imported by {' <- '.join(chain)}" for name, chain in loaded.items())
    assert not loaded, f"importing {module} loads {sorted(loaded)}:\n{why}"


def test_the_probe_sees_a_banned_import_and_its_chain() -> None:
    # The check above is only worth something if the probe can report a load and who caused it.
    loaded = loaded_by("hub.db.store")
    assert "sqlalchemy" in loaded
    assert "hub.db.store" in loaded["sqlalchemy"]
