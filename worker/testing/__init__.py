"""Testing what you build on warden: actions and publishers.

- :class:`TestIssuer`: an authorization server of the test's own on loopback, minting tokens of
  any shape with keys it generated;
- :class:`TestWorker`: a job through every check and its action, without a broker;
- :func:`running_worker`, :func:`scratch_queue`: a real worker on RabbitMQ in the test's event
  loop, on a queue of its own (the ``warden_worker`` and ``warden_queue`` fixtures);
- the pytest plugin :mod:`worker.testing.plugin`, registered as ``warden``.

``docs/testing.md`` shows each in use.
"""

from worker.devissuer import DROP, SigningKey
from worker.pipeline.results import JobResult
from worker.testing.broker import RunningWorker, running_worker, scratch_queue
from worker.testing.harness import LocalKeys, TestWorker
from worker.testing.issuers import TestIssuer

__all__ = [
    "DROP",
    "JobResult",
    "LocalKeys",
    "RunningWorker",
    "SigningKey",
    "TestIssuer",
    "TestWorker",
    "running_worker",
    "scratch_queue",
]
