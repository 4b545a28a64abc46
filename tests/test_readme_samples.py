"""The README's samples as a user copies them: an action module, a test of it without a broker
(under 20 lines) and one against RabbitMQ, run by pytest in a project of their own, where the
fixtures come from warden's plugin alone (no conftest)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = "amqp://guest:guest@127.0.0.1:1/"
"""A broker URL where nothing listens."""


def samples() -> dict[str, str]:
    """The README's Python blocks that open with ``# <path>``, by that path."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    found = {}
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("# ") and first.split()[1].endswith(".py"):
            found[first.split()[1]] = block
    return found


def project(tmp_path: Path) -> Path:
    for name, code in samples().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    return tmp_path


def pytest_in(folder: Path, test: str, broker_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "PYTEST_"))}
    # cloudcoil, installed by this suite's extras, registers a plugin that cannot load here.
    env |= {"WARDEN_BROKER_URL": broker_url, "PYTEST_ADDOPTS": "-p no:cloudcoil"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_readme_has_an_action_and_two_tests_of_it() -> None:
    found = samples()
    assert set(found) == {
        "myapp/actions.py",
        "tests/test_reports.py",
        "tests/test_reports_rabbitmq.py",
    }
    assert len(found["tests/test_reports.py"].splitlines()) < 20


def test_the_test_without_a_broker_passes_with_no_broker(tmp_path: Path) -> None:
    result = pytest_in(project(tmp_path), "tests/test_reports.py", NOBODY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.broker
def test_the_test_against_rabbitmq_passes_with_the_fixtures(
    broker_url: str, tmp_path: Path
) -> None:
    folder = project(tmp_path)
    result = pytest_in(folder, "tests/test_reports_rabbitmq.py", broker_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    # It needs the broker: without one the plugin skips it rather than pass.
    alone = pytest_in(folder, "tests/test_reports_rabbitmq.py", NOBODY)
    assert "1 skipped" in alone.stdout, alone.stdout + alone.stderr
