"""The issuer tests get: warden's development issuer under the name tests know it by."""

from __future__ import annotations

from worker.devissuer.server import DevIssuer


class TestIssuer(DevIssuer):
    """An authorization server of the test's own, serving on 127.0.0.1 once started (a context
    manager, or the ``warden_issuer`` fixture): RFC 8414 and OpenID discovery, its JWKS, and the
    client-credentials grant at :attr:`token_url` for the clients :meth:`register` adds.

    :meth:`token` mints any access token a test needs with the issuer's own keys, generated
    when it is made and never written: any scope, audience, lifetime (negative: expired),
    delegation (``act``), binding to a publisher's key (``bound_to``), any header, any key
    (``key=SigningKey.generate("ES256")``: one the issuer never published), and
    :data:`~worker.devissuer.DROP` to leave a claim out. :meth:`rotate` adds a key. Every
    token carries ``"warden_dev": "not for production"``.
    """
