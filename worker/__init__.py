"""warden: a resource server for message queues.

Applications register actions with :func:`action`; warden verifies each job's access token
before it runs one, and dead-letters what it refuses.
"""

from .actions import ANY_ACTOR, Job, Principal, action
from .errors import Reject, Retry

__all__ = ["ANY_ACTOR", "Job", "Principal", "Reject", "Retry", "action"]
