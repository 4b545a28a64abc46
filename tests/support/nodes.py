"""RabbitMQ nodes of the tests' own, run by the installed ``rabbitmq-server`` beside the shared
broker, and the faults a test causes on them: stop the application, kill or freeze the Erlang VM,
raise a memory or a disk alarm.

Each operation returns once the broker shows its effect (the port refuses, a handshake answers, a
publisher is blocked) or raises :class:`NodeError` saying what did not happen in time. A node is
not the test process's child (``-detached`` hands the VM to init) and sends no event when its
process stops or its port closes: those waits poll, briefly. Blocking is an AMQP event, awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika

from tests.support.blocked import BlockedPublisher, close_soon

HOST = "localhost"
"""The host part of node names, as the shared node's (``rabbit@localhost``): it resolves to
127.0.0.1, where the one epmd of the machine listens."""

CLI_DIST_PORTS = ("35701", "35730")
"""Distribution ports of the tests' own rabbitmqctl runs. The CLI takes 35672-35682 by default,
eleven ports shared with every other rabbitmqctl run on the machine."""

MEMORY_WATERMARK = "0.4"
DISK_FREE_LIMIT = "50000000"
MEMORY_ALARM_WATERMARK = "0.0000001"
DISK_ALARM_FREE_LIMIT = str(10**15)
"""A free-disk limit of a petabyte: no test machine has that much free, so the alarm holds."""

POLL_SECONDS = 0.1


class NodeError(Exception):
    """A node did not do what was asked, or not in time."""


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds: for another process's state, which sends no event."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise NodeError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(POLL_SECONDS)


async def run(*argv: str, timeout: float = 30.0) -> str:
    """Run a RabbitMQ command line tool; its output, or NodeError naming it when it fails."""
    environment = {
        **os.environ,
        "RABBITMQ_CTL_DIST_PORT_MIN": CLI_DIST_PORTS[0],
        "RABBITMQ_CTL_DIST_PORT_MAX": CLI_DIST_PORTS[1],
    }
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        # The wrapper runs the tool under su: end the whole process group started here.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise NodeError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from None
    if process.returncode != 0:
        said = (err or out).decode(errors="replace").strip()
        raise NodeError(f"`{' '.join(argv)}` exited {process.returncode}: {said}")
    return out.decode()


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, T...) from /proc; None once it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state = stat.rsplit(")", 1)[1].split()[0]
    return None if state in ("Z", "X") else state


def vm_pids(nodename: str) -> list[int]:
    """The pids of the Erlang VMs running as node ``nodename``. The server takes its name from
    the environment, not the command line, so that is where to look."""
    mine = f"RABBITMQ_NODENAME={nodename}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_bytes().strip() != b"beam.smp":
                continue
            if mine in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return [pid for pid in pids if process_state(pid) is not None]


async def port_refuses(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` is refused (nothing listens)."""
    try:
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


class Node:
    """One RabbitMQ node of the tests' own: its name, ports and folder, and the faults to cause
    on it. The attributes ``pid``, ``app_stopped``, ``frozen`` and ``alarms`` record what was
    done through this object, so that :meth:`recover` can undo it."""

    def __init__(self, name: str, port: int, dist_port: int, base: Path, prefix: str = "") -> None:
        self.name = name
        self.nodename = f"warden-{prefix}{name}@{HOST}"
        self.port = port
        self.dist_port = dist_port
        self.home = base / name
        self.pid: int | None = None
        self.app_stopped = False
        self.frozen = False
        self.alarms: set[str] = set()
        self._publisher: BlockedPublisher | None = None

    def __repr__(self) -> str:
        return f"<Node {self.nodename} amqp=127.0.0.1:{self.port}>"

    @property
    def url(self) -> str:
        """The AMQP URL of this node."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.home / "rabbitmq.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "log" / f"{self.nodename}.log"

    @property
    def reachable(self) -> bool:
        """Whether, by what was done through this object, the broker should answer."""
        return self.pid is not None and not self.frozen and not self.app_stopped

    # --- the VM ---------------------------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        """Boot the node (``rabbitmq-server -detached``) on the data it has, if any; return once
        it answers an AMQP handshake. A cluster member rejoins its cluster as it boots."""
        running = self._find_pid()
        if running is not None:
            raise NodeError(f"{self} already runs (pid {running})")
        self._write_config()
        self.pid_file.unlink(missing_ok=True)
        output = self.home / "rabbitmq-server.out"
        with output.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                "rabbitmq-server",
                "-detached",
                env=self._environment(),
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
            code = await asyncio.wait_for(process.wait(), timeout)
        if code != 0:
            raise NodeError(
                f"rabbitmq-server -detached for {self.nodename} exited {code}: "
                f"{output.read_text(errors='replace')[-2000:]}"
            )
        try:
            await until(self._booted, timeout, f"{self.nodename} to answer on port {self.port}")
        except NodeError as exc:
            raise NodeError(f"{exc}\n{self._log_tail()}") from None
        self.pid = int(self.pid_file.read_text())
        self.app_stopped = self.frozen = False
        self.alarms.clear()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the node's VM whatever its state (frozen, stopped application, alarms, or left
        over by an earlier run): SIGCONT, ``rabbitmqctl stop``, SIGKILL if it does not end."""
        pid = self._find_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(NodeError):
                await self.ctl("stop", timeout=timeout)
            try:
                await until(lambda: process_state(pid) is None, timeout, f"{self} to end")
            except NodeError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await until(lambda: process_state(pid) is None, 10, f"{self} to die of SIGKILL")
        await self._forget_vm()

    async def kill(self, timeout: float = 15.0) -> None:
        """SIGKILL the node's Erlang VM (beam.smp), as a crash or the OOM killer would; return
        once the process is gone and the port refuses. :meth:`start` boots it again."""
        pid = self._running_pid()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: process_state(pid) is None, timeout, f"{self} (pid {pid}) to die")
        await until(lambda: port_refuses(self.port), timeout, f"{self}'s port to refuse")
        await self._forget_vm()

    async def freeze(self) -> None:
        """SIGSTOP the node's VM: the kernel still accepts TCP connections on its ports but
        nothing answers, as with a VM paused by its host; return once the process is stopped."""
        pid = self._running_pid()
        os.kill(pid, signal.SIGSTOP)
        self.frozen = True
        await until(lambda: process_state(pid) in ("T", "t"), 10, f"{self} to be stopped")

    async def thaw(self, timeout: float = 30.0) -> None:
        """SIGCONT a frozen node; return once it answers a handshake (if its broker runs)."""
        pid = self._running_pid()
        os.kill(pid, signal.SIGCONT)
        self.frozen = False
        await until(lambda: process_state(pid) not in ("T", "t"), 10, f"{self} to run again")
        if not self.app_stopped:
            await until(self.answers, timeout, f"{self} to answer after SIGCONT")

    # --- the broker application ---------------------------------------------------------------

    async def stop_app(self, timeout: float = 30.0) -> None:
        """``rabbitmqctl stop_app``: the VM stays, the broker stops; return once the port
        refuses connections."""
        await self.ctl("stop_app", timeout=timeout)
        self.app_stopped = True
        await until(lambda: port_refuses(self.port), timeout, f"{self}'s port to refuse")

    async def start_app(self, timeout: float = 60.0) -> None:
        """``rabbitmqctl start_app``; return once the node answers an AMQP handshake."""
        await self.ctl("start_app", timeout=timeout)
        self.app_stopped = False
        await until(self.answers, timeout, f"{self} to answer after start_app")

    async def recover(self, timeout: float = 60.0) -> None:
        """Undo what was done through this object: thaw, boot a killed VM, start a stopped
        broker, lift alarms. Whether publishers flow again is for the caller to check."""
        if self.frozen:
            await self.thaw(timeout)
        if self.pid is None:
            await self.start(timeout)
        if self.app_stopped:
            await self.start_app(timeout)
        for alarm in sorted(self.alarms):
            await self._lift_alarm(alarm, timeout)
        await self._release_publisher(timeout)

    # --- resource alarms ----------------------------------------------------------------------

    async def raise_memory_alarm(self, timeout: float = 30.0) -> None:
        """Set the memory high watermark below what the VM uses; return once the broker blocks
        a publisher on this node."""
        await self._raise_alarm("memory", timeout)

    async def clear_memory_alarm(self, timeout: float = 30.0) -> None:
        """Put the memory high watermark back; return once a confirmed publish goes through
        (unless another alarm is still up)."""
        await self._clear_alarm("memory", timeout)

    async def raise_disk_alarm(self, timeout: float = 30.0) -> None:
        """Set the free disk limit above what the disk has; return once the broker blocks a
        publisher on this node."""
        await self._raise_alarm("disk", timeout)

    async def clear_disk_alarm(self, timeout: float = 30.0) -> None:
        """Put the free disk limit back; return once a confirmed publish goes through (unless
        another alarm is still up)."""
        await self._clear_alarm("disk", timeout)

    async def publishes(self, timeout: float = 10.0) -> None:
        """Return once a confirmed publish to this node goes through: no resource alarm blocks
        publishers here (in a cluster, an alarm on any member blocks them on all)."""
        connection = await aio_pika.connect(self.url, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                channel = await connection.channel(publisher_confirms=True)
                probe = aio_pika.Message(b"", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
                await channel.default_exchange.publish(probe, "warden.probe", mandatory=False)
        except TimeoutError:
            raise NodeError(
                f"a confirmed publish to {self} did not go through within {timeout:g} s: "
                "an alarm still blocks publishers"
            ) from None
        finally:
            await close_soon(connection)

    # --- looking at it ------------------------------------------------------------------------

    async def answers(self, timeout: float = 2.0) -> bool:
        """Whether the node completes an AMQP handshake within ``timeout``."""
        if await port_refuses(self.port):  # spares aiormq's error log of each refused attempt
            return False
        try:
            connection = await aio_pika.connect(self.url, timeout=timeout)
        except OSError:  # refused, reset, timed out, or refused by the broker while it boots
            return False
        await close_soon(connection)
        return True

    async def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """``rabbitmqctl -q -n NODE ARGS``: its output."""
        return await run("rabbitmqctl", "-q", "-n", self.nodename, *args, timeout=timeout)

    async def eval(self, expression: str, timeout: float = 30.0) -> str:
        """``rabbitmqctl eval``: the Erlang term it printed."""
        return (await self.ctl("eval", expression, timeout=timeout)).strip()

    # --- inside ---------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # The machine's rabbitmq.conf would put a listener on the shared node's port.
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # Run by root, the packaged wrapper starts the server as the rabbitmq user.
        self.home.chmod(0o777)
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            f"vm_memory_high_watermark.relative = {MEMORY_WATERMARK}\n"
            f"disk_free_limit.absolute = {DISK_FREE_LIMIT}\n"
        )
        (self.home / "enabled_plugins").write_text("[].\n")

    async def _booted(self) -> bool:
        if self.pid_file.exists():
            with contextlib.suppress(ValueError):
                pid = int(self.pid_file.read_text())
                if process_state(pid) is None:
                    raise NodeError(f"{self} (pid {pid}) exited while booting\n{self._log_tail()}")
        return await self.answers()

    def _running_pid(self) -> int:
        if self.pid is None:
            raise NodeError(f"{self} is not running")
        return self.pid

    def _find_pid(self) -> int | None:
        """The pid of the VM running as this node, whoever started it (an earlier run may have
        been killed before its cleanup); None if there is none."""
        pids = vm_pids(self.nodename)
        if not pids and self.pid is not None and process_state(self.pid) is not None:
            pids = [self.pid]  # started here, in an environment this process may not read
        return pids[0] if pids else None

    async def _forget_vm(self) -> None:
        """What was done to a VM that is gone goes with it (alarm settings too: the node boots
        with those of its configuration)."""
        self.pid = None
        self.app_stopped = self.frozen = False
        self.alarms.clear()
        self.pid_file.unlink(missing_ok=True)
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.abandon()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_file})"
        return f"last lines of {self.log_file}:\n" + "\n".join(text.splitlines()[-lines:])

    async def _raise_alarm(self, alarm: str, timeout: float) -> None:
        setting, _, reason = _ALARMS[alarm]
        if self._publisher is None:
            self._publisher = await BlockedPublisher.open(self.url, timeout)
        alone = not self.alarms
        self.alarms.add(alarm)
        await self.ctl(*setting, timeout=timeout)
        try:
            await self._publisher.wait_blocked(timeout, reason if alone else None)
        except TimeoutError:
            raise NodeError(
                f"{self} set {' '.join(setting)}, but no publisher was blocked within "
                f"{timeout:g} s (frames: {self._publisher.watch.events or 'none'})"
            ) from None

    async def _clear_alarm(self, alarm: str, timeout: float) -> None:
        await self._lift_alarm(alarm, timeout)
        if not self.alarms:
            await self._release_publisher(timeout)
            await self.publishes(timeout)

    async def _lift_alarm(self, alarm: str, timeout: float) -> None:
        await self.ctl(*_ALARMS[alarm][1], timeout=timeout)
        self.alarms.discard(alarm)

    async def _release_publisher(self, timeout: float) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                await publisher.close(timeout)
            except TimeoutError:
                raise NodeError(
                    f"{self} lifted its alarms, but the broker did not unblock a publisher "
                    f"within {timeout:g} s"
                ) from None


_ALARMS = {
    "memory": (
        ("set_vm_memory_high_watermark", MEMORY_ALARM_WATERMARK),
        ("set_vm_memory_high_watermark", MEMORY_WATERMARK),
        "low on memory",
    ),
    "disk": (
        ("set_disk_free_limit", DISK_ALARM_FREE_LIMIT),
        ("set_disk_free_limit", DISK_FREE_LIMIT),
        "low on disk",
    ),
}
"""Per alarm: the rabbitmqctl arguments that raise it, those that put the setting back, and the
reason the broker gives when it blocks a connection for it."""
