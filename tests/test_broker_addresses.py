"""``WARDEN_BROKER_URL`` as a list of nodes: what is accepted, the one line every command prints
for what is not (never a traceback, never an endless retry), the first address that answers, and
the heartbeat the broker is asked for (``docs/cluster.md``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import needs_rabbitmqctl, rabbitmqctl
from worker.amqp.connection import connect, open_connection
from worker.amqp.publisher import publish_jobs
from worker.errors import ConfigurationError
from worker.settings import BrokerSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"
REFUSING = f"amqp://guest:{SECRET}@127.0.0.1:1/"
"""A node that is down: nothing listens on port 1."""


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("WARDEN_"):
            monkeypatch.delenv(name)


def test_a_comma_separated_list_of_urls_is_every_address_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "WARDEN_BROKER_URL",
        "amqp://w:pw@rabbit-1:5672/ ,amqps://w:pw@rabbit-2:5671/vh,  amqp://w:pw@rabbit-3/",
    )
    settings = load_settings(BrokerSettings)
    assert settings.broker_urls() == (
        "amqp://w:pw@rabbit-1:5672/",
        "amqps://w:pw@rabbit-2:5671/vh",
        "amqp://w:pw@rabbit-3/",
    )
    assert settings.broker_user() == "w"
    assert settings.heartbeat_seconds == 10


BAD = {
    "an empty entry": (f"amqp://guest:{SECRET}@a/,,amqp://guest:{SECRET}@b/", "address 2 of 3"),
    "a trailing comma": (f"amqp://guest:{SECRET}@a/,", "address 2 of 2 is empty"),
    "a JSON list": (f'["amqp://guest:{SECRET}@a/", "amqp://guest:{SECRET}@b/"]', "not JSON"),
    "another scheme": (f"http://guest:{SECRET}@a:5672/", "not an amqp:// or amqps:// URL"),
    "a host alone": ("rabbit-1:5672", "not an amqp:// or amqps:// URL"),
    "a port out of range": (f"amqp://guest:{SECRET}@a:70000/", "port"),
    "a port that is no number": (f"amqp://guest:{SECRET}@a:56x2/", "port"),
    "no host": (f"amqp://guest:{SECRET}@:5672/", "names no host"),
    "two users": (f"amqp://guest:{SECRET}@a/,amqp://other:{SECRET}@b/", "same user"),
}


@pytest.mark.parametrize(("value", "said"), BAD.values(), ids=BAD.keys())
def test_a_bad_list_is_one_line_naming_the_variable_and_no_password(
    monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    monkeypatch.setenv("WARDEN_BROKER_URL", value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(BrokerSettings)
    message = str(caught.value)
    assert message.startswith("WARDEN_BROKER_URL: ")
    assert said in message
    assert "\n" not in message
    assert SECRET not in message


@pytest.mark.parametrize("value", ["0", "601", "ten"])
def test_a_heartbeat_out_of_range_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("WARDEN_HEARTBEAT_SECONDS", value)
    with pytest.raises(ConfigurationError, match="WARDEN_HEARTBEAT_SECONDS"):
        load_settings(BrokerSettings)


COMMANDS = {
    "run": ["run"],
    "publish": ["publish", "jobs", "reports.generate", "--token", "t"],
    "revoke": ["revoke", "--jti", "j1"],
    "dlq stats": ["dlq", "stats", "jobs"],
    "dlq replay": ["dlq", "replay", "jobs", "--all", "--token", "t"],
}


@pytest.mark.parametrize("argv", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("value", [BAD["a JSON list"][0], BAD["an empty entry"][0]])
def test_every_command_stops_at_once_on_a_bad_list(argv: list[str], value: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    environment |= {
        "WARDEN_BROKER_URL": value,
        "WARDEN_ISSUER": "https://issuer.test/",
        "WARDEN_AUDIENCE": "https://warden.test/",
        "WARDEN_ACTIONS": "tests.support.process_actions",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", *argv],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("warden: configuration error: WARDEN_BROKER_URL: "), line
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.broker
async def test_a_node_that_is_down_is_passed_over_for_the_next_address(
    broker_url: str, rabbit: Rabbit, queue_name: str
) -> None:
    await rabbit.declare_work_queue(queue_name)
    both = f"{REFUSING} , {broker_url}"

    [job] = await publish_jobs(both, queue_name, "reports.read", {}, "a-token")
    assert [m.message_id for m in await rabbit.get_all(queue_name)] == [job]

    connection = await connect(both, "consuming")
    try:
        assert connection.url.port == int(broker_url.rsplit(":", 1)[1].split("/")[0])
    finally:
        await connection.close()


def test_when_no_address_answers_a_tool_says_so_in_one_line() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    environment["WARDEN_BROKER_URL"] = f"{REFUSING},amqp://guest:{SECRET}@127.0.0.1:2/"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "stats", "jobs"],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("warden: dlq stats failed: cannot reach the broker")
    )
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr


@needs_rabbitmqctl
@pytest.mark.broker
@pytest.mark.parametrize(
    ("query", "expected"),
    [("", "7"), ("?heartbeat=3", "3")],
    ids=["the setting", "the address's own"],
)
async def test_the_broker_is_asked_for_the_configured_heartbeat(
    broker_url: str, query: str, expected: str
) -> None:
    name = f"warden heartbeat test {expected}"
    connection = await open_connection(f"{broker_url}{query}", name, heartbeat=7)
    try:
        listing = await rabbitmqctl(
            "list_connections", "--no-table-headers", "timeout", "client_properties"
        )
    finally:
        await connection.close()
    [heartbeat] = [line.split("\t")[0] for line in listing.splitlines() if f'"{name}"' in line]
    assert heartbeat == expected
