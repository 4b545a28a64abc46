"""``warden demo``, the README's first command, as a new user runs it with only RabbitMQ: allowed
jobs and refusals for at least five reasons, shown and counted as ``warden dlq stats`` counts
them afterwards, within 60 s; ``--keep-running`` prints commands that work. Nothing it prints
or logs holds a token or a secret, and nothing it makes is written to disk."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.rabbit import Rabbit
from worker import errors

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
WARDEN = shutil.which("warden", path=str(Path(sys.executable).parent))
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
"""Any compact JWS whose header and claims are JSON objects: any token, whoever minted it."""
CELLS = re.compile(r"[│|┃]")


def readme_commands() -> list[str]:
    """The lines of the README's first sh block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def rows(output: str, columns: int) -> list[list[str]]:
    """The rows of the tables in ``output`` with ``columns`` cells, header rows included."""
    found = []
    for line in output.splitlines():
        cells = [c.strip() for c in CELLS.split(line)[1:-1]]
        if len(cells) == columns and any(cells):
            found.append(cells)
    return found


def environment(broker_url: str, home: Path) -> dict[str, str]:
    """A user's environment: no WARDEN_* but the broker, a home and a temp folder of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    return env | {
        "WARDEN_BROKER_URL": broker_url,
        "HOME": str(home),
        "TMPDIR": str(home),
        "COLUMNS": "200",
    }


@dataclass
class Demo:
    """Where a test runs the demo: a queue of its own, and a user's home with nothing in it."""

    queue: str
    home: Path
    env: dict[str, str]

    async def warden(self, *args: str, logs: bool = True) -> asyncio.subprocess.Process:
        """``warden ARGS`` as the user runs it, in their home."""
        assert WARDEN is not None
        return await asyncio.create_subprocess_exec(
            WARDEN,
            *args,
            env=self.env,
            cwd=self.home,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if logs else asyncio.subprocess.DEVNULL,
        )


@pytest.fixture
def demo(broker_url: str, rabbit: Rabbit, tmp_path: Path) -> Demo:
    assert WARDEN is not None
    queue = f"t-demo-{uuid.uuid4().hex[:8]}"
    rabbit.forget_later(queue)
    home = tmp_path / "home"
    home.mkdir()
    return Demo(queue, home, environment(broker_url, home))


def read_private(path: Path) -> str:
    """What a file only its owner may read holds."""
    assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    return path.read_text()


def test_the_readme_opens_with_the_demo() -> None:
    first, second = readme_commands()
    assert first == "pip install -e . && warden demo"
    assert "python -m pytest" in second


async def test_the_demo_shows_allowed_jobs_and_refusals_that_dlq_stats_counts_alike(
    demo: Demo,
) -> None:
    assert WARDEN is not None
    queue, home = demo.queue, demo.home
    command = readme_commands()[0].split("&&")[-1].split()
    assert command == ["warden", "demo"]

    started = time.monotonic()
    process = await demo.warden(*command[1:], "--queue", queue)
    out, err = await asyncio.wait_for(process.communicate(), 90)
    took = time.monotonic() - started
    printed, logged = out.decode(), err.decode()
    assert process.returncode == 0, printed + logged
    assert took < 60

    outcomes = [row[4] for row in rows(printed, 5) if row[0].isdigit()]
    assert outcomes.count("allowed") >= 1
    refusals = Counter(o for o in outcomes if o != "allowed")
    assert len(refusals) >= 5
    assert set(refusals) <= set(errors.REASONS)
    shown = {r[0]: int(r[1]) for r in rows(printed, 2) if r[1].isdigit() and r[0] != "all"}
    assert shown == refusals

    stats = await demo.warden("dlq", "stats", queue, "--json")
    counted, _ = await stats.communicate()
    assert json.loads(counted) == {queue: dict(refusals)}

    assert f"warden dlq stats {queue}" in printed
    assert "warden demo --keep-running" in printed
    assert "warden explain" in printed
    # No token in anything it printed or logged; the issuer labels every line it logged.
    assert not JWT.search(printed + logged)
    issuer_lines = [json.loads(line) for line in logged.splitlines() if "warden.devissuer" in line]
    assert issuer_lines
    assert all("not for production" in line["event"] for line in issuer_lines)
    # Keys and secrets lived in memory only.
    assert list(home.iterdir()) == []


async def test_keep_running_prints_a_token_command_and_a_publish_command_that_work(
    demo: Demo, tmp_path: Path
) -> None:
    assert WARDEN is not None
    queue, home, env = demo.queue, demo.home, demo.env
    process = await demo.warden("demo", "--keep-running", "--queue", queue, logs=False)
    assert process.stdout is not None
    printed: list[str] = []

    async def line() -> str:
        text = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert text, "the demo stopped:\n" + "".join(printed)
        printed.append(text)
        return text.rstrip("\n")

    try:
        while "In another shell:" not in await line():
            pass
        commands = []
        while text := await line():
            commands.append(text.strip())
        while "Jobs of your own" not in await line():
            pass
        work = tmp_path / "shell"
        work.mkdir()
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-ec",
            "\n".join(commands),
            env=env,
            cwd=work,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shell.communicate(), 60)
        assert shell.returncode == 0, out.decode() + err.decode()
        said = out.decode()
        assert "verdict: allowed" in said
        [published] = re.findall(r"^[0-9a-f-]{36}$", said, re.MULTILINE)
        while published not in (settled := await line()):
            pass
        assert settled.split() == [published, "reports.generate", "allowed"]

        token = (work / "token.jwt").read_text().strip()
        assert JWT.match(token)
        secret_file = Path(re.findall(r'"\$\(cat (\S+)\)"', "\n".join(commands))[0])
        secret = read_private(secret_file)
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    everything = "".join(printed) + rest.decode()
    assert token not in everything
    assert secret not in everything
    assert not JWT.search(everything)
    assert list(home.iterdir()) == []
