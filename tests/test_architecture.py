"""The shape of the code holds: the import contracts of ``pyproject.toml`` (``docs/ARCHITECTURE.md``
says why each exists), ruff's rules and mypy's strict mode, checked on every test run so that CI
refuses a change that breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is part of the test extras"
    result = _run(lint, "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in ("layers", "core-without-amqp", "amqp-at-the-edge"):
        assert _contract_name(contract) in result.stdout


def _contract_name(identifier: str) -> str:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["id"] == identifier]
    return str(contract["name"])


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("ruff", "check", "worker", "tests", "bench"), id="ruff"),
        pytest.param(("ruff", "format", "--check", "worker", "tests", "bench"), id="ruff-format"),
        pytest.param(("mypy",), id="mypy-strict"),
    ],
)
def test_linters_are_clean(command: tuple[str, ...]) -> None:
    tool = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert tool is not None, f"{command[0]} is part of the test extras"
    result = _run(tool, *command[1:])
    assert result.returncode == 0, result.stdout + result.stderr
