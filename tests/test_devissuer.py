"""The development issuer as a process of its own (``python -m worker.devissuer``), as the compose
stack's local override runs it: https only beyond loopback, secrets only from the environment,
one-line errors, and SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from worker.devissuer import DevIssuer

ROOT = Path(__file__).resolve().parent.parent


def _devissuer(*args: str, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_CLIENT_SECRET")}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.devissuer", *args],
        env={**clean, **env},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_line_error(*args: str, **env: str) -> str:
    process = _devissuer(*args, **env)
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0, err
    [line] = err.strip().splitlines()
    return line


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_beyond_loopback_it_serves_https_only(host: str) -> None:
    with pytest.raises(ValueError, match=f"serves {host}, beyond loopback, only over https"):
        DevIssuer(host=host)
    line = _one_line_error("--bind", host, "--port", "0")
    assert line == (
        f"devissuer: the development issuer serves {host}, beyond loopback, only over https"
    )


def test_a_client_without_its_secret_in_the_environment_is_refused_in_one_line() -> None:
    line = _one_line_error("--client", "reporter", "reports:write")
    assert line == "devissuer: set REPORTER_CLIENT_SECRET to the secret of client reporter"


def test_an_unreadable_certificate_is_refused_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    line = _one_line_error("--tls-cert", str(missing), "--tls-key", str(missing))
    assert line.startswith(f"devissuer: cannot load {missing}: ")


def test_it_serves_until_sigterm_and_exits_0_never_logging_a_secret() -> None:
    process = _devissuer(
        "--client", "reporter", "reports:write", REPORTER_CLIENT_SECRET="s3cret-value"
    )
    try:
        assert process.stderr is not None
        serving = json.loads(process.stderr.readline())
        assert serving["event"] == "development issuer, not for production: serving"
        assert serving["issuer"].startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "s3cret-value" not in rest
