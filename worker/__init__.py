"""warden: a resource server for message queues.

Applications register actions with :func:`action`; warden verifies each job's access token
before it runs one, and dead-letters what it refuses.
"""

from .actions import Job, Principal, action
from .errors import Reject, Retry

__all__ = ["Job", "Principal", "Reject", "Retry", "action"]
