"""Getting an access token from the authorization server with the client-credentials grant
(RFC 6749 section 4.4), for ``warden publish`` and ``warden dlq replay``. warden never mints
a token: it asks the authorization server for one, as any publisher would."""

from __future__ import annotations

import httpx

from worker.errors import TokenRequestFailed


async def client_credentials_token(
    token_url: str,
    client_id: str,
    client_secret: str,
    *,
    scope: str | None = None,
    resource: str | None = None,
    http_timeout: float = 10.0,
) -> str:
    """An access token for ``client_id``; ``resource`` is the RFC 8707 resource indicator
    (also sent as ``audience``, which some servers expect instead)."""
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    if resource:
        form["resource"] = resource
        form["audience"] = resource
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        try:
            response = await http.post(
                token_url,
                data=form,
                auth=httpx.BasicAuth(client_id, client_secret),
                headers={"accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TokenRequestFailed(f"POST {token_url}: {type(exc).__name__}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise TokenRequestFailed(f"POST {token_url}: HTTP {response.status_code} {error or ''}")
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenRequestFailed(f"POST {token_url}: no access_token in the answer")
    return token
