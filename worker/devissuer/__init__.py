"""The development issuer: an authorization server for demos and tests, not for production.

:class:`DevIssuer` serves it on loopback (``warden demo`` runs one; :mod:`worker.testing` hands
one to tests as ``TestIssuer``), or over https beyond it (``python -m worker.devissuer``, the
compose stack's local issuer); :class:`Issuer` is its authority alone, minting tokens without
serving anything.
"""

from worker.devissuer.issuer import DROP, LABEL_CLAIM, NOT_FOR_PRODUCTION, Client, Issuer
from worker.devissuer.keys import SigningKey
from worker.devissuer.server import DevIssuer

__all__ = [
    "DROP",
    "LABEL_CLAIM",
    "NOT_FOR_PRODUCTION",
    "Client",
    "DevIssuer",
    "Issuer",
    "SigningKey",
]
