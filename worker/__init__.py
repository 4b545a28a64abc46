"""warden: a resource server for message queues.

Applications register actions with :func:`action`; warden verifies each job's access token
before it runs one, and dead-letters what it refuses. Publishers send jobs with
:class:`Publisher`, their token from a :class:`ClientCredentials` grant or any token source.
"""

from worker.amqp.publisher import NewJob, Publisher
from worker.auth.credentials import ClientCredentials, TokenSource
from worker.auth.principal import Principal
from worker.errors import JobRefused, Reject, Retry
from worker.pipeline.actions import ANY_ACTOR, Job, action

__all__ = [
    "ANY_ACTOR",
    "ClientCredentials",
    "Job",
    "JobRefused",
    "NewJob",
    "Principal",
    "Publisher",
    "Reject",
    "Retry",
    "TokenSource",
    "action",
]
