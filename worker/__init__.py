"""warden: a resource server for message queues.

Applications register actions with :func:`action`; warden verifies each job's access token
before it runs one, and dead-letters what it refuses.
"""

from worker.auth.principal import Principal
from worker.errors import Reject, Retry
from worker.pipeline.actions import ANY_ACTOR, Job, action

__all__ = ["ANY_ACTOR", "Job", "Principal", "Reject", "Retry", "action"]
