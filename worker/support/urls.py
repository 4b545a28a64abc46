"""Where warden may send a request that carries keys or a token: ``https``, or ``http`` that
never leaves the machine (RFC 8252 section 8.3's loopback addresses)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

HTTPS_REQUIRED = "https is required (http only to a loopback address: 127.0.0.0/8, ::1, localhost)"
"""What a refused URL is told, after its name."""


def is_loopback_host(host: str) -> bool:
    """``localhost``, an address of 127.0.0.0/8, or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_url(url: str) -> bool:
    """Whether ``url`` is ``https``, or ``http`` to a loopback address, with a host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    scheme = parts.scheme.lower()
    return scheme == "https" or (scheme == "http" and is_loopback_host(host))
