"""RabbitMQ nodes the tests own: a three-node cluster and a standalone node, started once for the
session and put back to health between tests."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika

from tests.support.nodes import Node, NodeError, run, until


class Cluster:
    """Nodes clustered together; operations that need more than one node."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = tuple(nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def node(self, name: str) -> Node:
        """The member called ``name``: short (``c2``) or Erlang (``warden-c2@localhost``)."""
        for node in self.nodes:
            if name in (node.name, node.nodename):
                return node
        raise KeyError(f"no node {name!r} in {[node.name for node in self.nodes]}")

    @property
    def urls(self) -> list[str]:
        """The AMQP URL of every member, in order."""
        return [node.url for node in self.nodes]

    def reachable(self, but: Node | None = None) -> Node:
        """A member whose broker should answer (by what was done to it), other than ``but``."""
        for node in self.nodes:
            if node.reachable and node is not but:
                return node
        raise NodeError(f"no member of {self} but {but} is reachable")

    async def form(self, timeout: float = 60.0) -> None:
        """Join every member to the first: stop_app, join_cluster (one node at a time, the
        schema changes with each), start_app; return once all run in one cluster."""
        seed, *others = self.nodes
        await asyncio.gather(*(node.stop_app(timeout) for node in others))
        for node in others:
            await node.ctl("join_cluster", seed.nodename, timeout=timeout)
        await asyncio.gather(*(node.start_app(timeout) for node in others))
        await self.wait_clustered(timeout)

    async def status(self, via: Node | None = None) -> dict[str, Any]:
        """``rabbitmqctl cluster_status`` as ``via`` (a reachable member if None) sees it."""
        node = via or self.reachable()
        status: dict[str, Any] = json.loads(await node.ctl("cluster_status", "--formatter", "json"))
        return status

    async def running_members(self, via: Node | None = None) -> set[str]:
        """The Erlang names of the members ``via`` sees running the broker."""
        return set((await self.status(via))["running_nodes"])

    async def wait_running(
        self, members: Iterable[Node], *, via: Node | None = None, timeout: float = 60.0
    ) -> None:
        """Wait until exactly ``members`` run the broker in the cluster, as ``via`` (a
        reachable member if None) sees it, without a partition."""
        expected = {node.nodename for node in members}
        last: dict[str, Any] = {}

        async def running() -> bool:
            nonlocal last
            last = await self.status(via)
            return set(last["running_nodes"]) == expected and not last["partitions"]

        try:
            await until(running, timeout, f"exactly {sorted(expected)} to run in the cluster")
        except NodeError as exc:
            raise NodeError(
                f"{exc}; running: {last.get('running_nodes')}, partitions: {last.get('partitions')}"
            ) from None

    async def wait_clustered(self, timeout: float = 60.0) -> None:
        """Wait until every member runs the broker in one cluster, without a partition."""
        await self.wait_running(self.nodes, timeout=timeout)

    async def quorum_status(self, queue: str, via: Node | None = None) -> list[dict[str, Any]]:
        """``rabbitmq-queues quorum_status``: one row per Raft member of quorum queue ``queue``,
        as that member answers for itself."""
        node = via or self.reachable()
        listing = await run(
            "rabbitmq-queues",
            "-q",
            "-n",
            node.nodename,
            "quorum_status",
            queue,
            "--formatter",
            "json",
        )
        rows: list[dict[str, Any]] = json.loads(listing)
        return rows

    async def quorum_members(self, queue: str, via: Node | None = None) -> set[str]:
        """The Erlang names of the nodes holding a member of quorum queue ``queue``."""
        return {row["Node Name"] for row in await self.quorum_status(queue, via)}

    async def leader(self, queue: str, via: Node | None = None) -> Node | None:
        """The member holding the leader of quorum queue ``queue`` now; None while there is
        none (an election runs, or no majority is up)."""
        rows = await self.quorum_status(queue, via)
        leaders = [row["Node Name"] for row in rows if row["Raft State"] == "leader"]
        return self.node(leaders[0]) if len(leaders) == 1 else None

    async def wait_leader(
        self, queue: str, *, away_from: Node | None = None, timeout: float = 30.0
    ) -> Node:
        """Wait until quorum queue ``queue`` has a leader (not on ``away_from``); its member."""
        found: Node | None = None
        failure = ""

        async def elected() -> bool:
            nonlocal found, failure
            try:
                found = await self.leader(queue, via=self.reachable(but=away_from))
            except NodeError as exc:  # members may not answer while they elect a leader
                failure = f"; last answer: {exc}"
                return False
            return found is not None and found is not away_from

        where = "" if away_from is None else f" on another node than {away_from.nodename}"
        try:
            await until(elected, timeout, f"quorum queue {queue!r} to have a leader{where}")
        except NodeError as exc:
            raise NodeError(f"{exc}{failure}") from None
        assert found is not None
        return found

    def __repr__(self) -> str:
        return f"<Cluster {' '.join(node.nodename for node in self.nodes)}>"


NODE_SET = int(os.environ.get("WARDEN_TEST_NODE_SET", "0"))
"""Which set of names and ports the nodes take: 0 (the default) gives warden-c1..c3 and s1 on
AMQP 5701-5704; set ``N`` gives warden-nNc1@localhost and so on, on ports 20*N higher, so two
checkouts on one machine can each run their own nodes."""

_SUFFIX = f"-{NODE_SET}" if NODE_SET else ""
_PREFIX = f"n{NODE_SET}" if NODE_SET else ""
_PORT = 5700 + 20 * NODE_SET

BASE = Path(tempfile.gettempdir()) / f"warden-rabbit-nodes{_SUFFIX}"
"""Where the nodes keep their data and logs, one folder each."""

LOCK_FILE = Path(tempfile.gettempdir()) / f"warden-rabbit-nodes{_SUFFIX}.lock"
"""Held by the test session that runs the nodes: names and ports are fixed, so two sessions on
one machine cannot both have them, and a node whose name is taken while nobody holds the lock
is a leftover of a session killed before its cleanup."""


class RabbitNodes:
    """Every node the tests own: ``cluster`` (c1, c2, c3 on AMQP ports 5701-5703) and
    ``standalone`` (s1 on 5704), with their data under ``base``."""

    def __init__(self, base: Path = BASE) -> None:
        self.base = base
        self.cluster = Cluster(
            [Node(f"c{i}", _PORT + i, 20000 + _PORT + i, base, _PREFIX) for i in (1, 2, 3)]
        )
        self.standalone = Node("s1", _PORT + 4, 20000 + _PORT + 4, base, _PREFIX)
        self.timings: dict[str, float] = {}
        self._lock: int | None = None

    @property
    def all(self) -> tuple[Node, ...]:
        return (*self.cluster.nodes, self.standalone)

    async def start(self, timeout: float = 120.0) -> None:
        """Claim the nodes, stop what a killed session left of them, boot every node, form the
        cluster."""
        self._claim()
        try:
            async with asyncio.timeout(timeout):
                with self._timed("leftovers stopped"):
                    await self._stop_all()
                self._fresh_base()
                with self._timed("nodes booted"):
                    await asyncio.gather(*(node.start() for node in self.all))
                with self._timed("cluster formed"):
                    await self.cluster.form()
        except TimeoutError:
            raise NodeError(f"the nodes did not start within {timeout:g} s") from None

    async def stop(self) -> None:
        """Stop every node, each even when another fails to; then raise the first failure.
        Nodes this session has not claimed belong to another session: they are left alone."""
        if self._lock is None:
            return
        try:
            await self._stop_all()
            shutil.rmtree(self.base, ignore_errors=True)
        finally:
            os.close(self._lock)
            self._lock = None

    async def _stop_all(self) -> None:
        results = await asyncio.gather(*(node.stop() for node in self.all), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _fresh_base(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir()
        # Started by root, the packaged server runs as the rabbitmq user: it must reach in.
        self.base.chmod(0o755)

    def _claim(self) -> None:
        if self._lock is not None:
            return
        lock = os.open(LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise NodeError(f"another test session runs the nodes (it holds {LOCK_FILE})") from None
        self._lock = lock

    async def restore(self) -> None:
        """Back to health after a test: every node up and unfrozen, the cluster whole, no alarm
        (a confirmed publish goes through on every node), no queue left."""
        with self._timed("restored"):
            await asyncio.gather(*(node.recover() for node in self.all))
            await asyncio.gather(
                self.cluster.wait_clustered(),
                *(node.publishes() for node in self.all),
                self._delete_queues(self.cluster.nodes[0]),
                self._delete_queues(self.standalone),
            )

    async def rebuild(self) -> None:
        """Stop every node, forget their data and start afresh: for when :meth:`restore` fails."""
        await self._stop_all()
        await self.start()

    async def _delete_queues(self, node: Node) -> None:
        names = (await node.ctl("list_queues", "--no-table-headers", "name")).split()
        if not names:
            return
        connection = await aio_pika.connect(node.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[step] = time.monotonic() - started
