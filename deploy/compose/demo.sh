#!/bin/sh
# Publishes jobs that warden allows and jobs that it denies, each for a different reason, with
# tokens fetched from the authorization server through the client-credentials grant.
# Run by `docker compose up` (service `demo`); without containers, set the DEMO_* variables,
# WARDEN_BROKER_URL and the two client secrets, then `sh deploy/compose/demo.sh`.
set -eu

queue=${DEMO_QUEUE:-jobs}
token_url=${DEMO_TOKEN_URL:-https://authz:8443/realms/warden/protocol/openid-connect/token}
audience=${DEMO_AUDIENCE:-https://jobs.example.com}
worker_url=${DEMO_WORKER_URL:-http://worker:9100}
: "${REPORTER_CLIENT_SECRET:?set it to the secret of the reporter client}"
: "${READER_CLIENT_SECRET:?set it to the secret of the reader client}"

say() { printf 'demo: %s\n' "$*"; }

# A worker is ready once it has declared the queues, loaded the issuer's keys and read the
# revocation feed: jobs published from then on are decided at once.
say "waiting for $worker_url/readyz"
python3 - "$worker_url/readyz" <<'PY'
import sys, time, urllib.request

deadline = time.monotonic() + 180
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).close()
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"demo: no worker became ready: {exc}")
        time.sleep(2)
PY

say "allowed: 3 x reports.generate by reporter (scope reports:write)"
WARDEN_CLIENT_SECRET=$REPORTER_CLIENT_SECRET warden publish "$queue" reports.generate \
  --payload '{"report": "q3"}' --count 3 \
  --token-url "$token_url" --client-id reporter --scope "reports:write" --resource "$audience"

say "allowed: 2 x reports.read by reader (scope reports:read)"
WARDEN_CLIENT_SECRET=$READER_CLIENT_SECRET warden publish "$queue" reports.read \
  --payload '{"report": "q3"}' --count 2 \
  --token-url "$token_url" --client-id reader --scope "reports:read" --resource "$audience"

say "denied scope_insufficient: reports.generate by reader, whose token has reports:read only"
WARDEN_CLIENT_SECRET=$READER_CLIENT_SECRET warden publish "$queue" reports.generate \
  --payload '{"report": "q4"}' \
  --token-url "$token_url" --client-id reader --scope "reports:read" --resource "$audience"

say "denied action_unknown: reports.delete is not an action warden runs"
WARDEN_CLIENT_SECRET=$REPORTER_CLIENT_SECRET warden publish "$queue" reports.delete \
  --payload '{"report": "q3"}' \
  --token-url "$token_url" --client-id reporter --scope "reports:write" --resource "$audience"

say "denied audience_mismatch: a token issued for the billing API, not for warden"
WARDEN_CLIENT_SECRET=$READER_CLIENT_SECRET warden publish "$queue" reports.read \
  --payload '{"report": "q3"}' \
  --token-url "$token_url" --client-id reader --scope "billing:read" \
  --resource https://billing.example.com

say "denied token_malformed: a bearer token that is not a JWS"
WARDEN_TOKEN=not-a-jwt warden publish "$queue" reports.read --payload '{"report": "q3"}'

say "denied signature_invalid: a real token whose signature was altered"
token=$(python3 - "$token_url" <<'PY'
import base64, json, os, sys, urllib.parse, urllib.request

form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "reports:write"})
basic = base64.b64encode(f"reporter:{os.environ['REPORTER_CLIENT_SECRET']}".encode()).decode()
request = urllib.request.Request(
    sys.argv[1], data=form.encode(), headers={"Authorization": f"Basic {basic}"}
)
with urllib.request.urlopen(request, timeout=10) as response:
    print(json.load(response)["access_token"])
PY
)
signature=${token##*.}
rest=${signature#?}
if [ "${signature%"$rest"}" = A ]; then first=B; else first=A; fi
WARDEN_TOKEN="${token%.*}.$first$rest" warden publish "$queue" reports.generate \
  --payload '{"report": "q3"}'

say "published 5 allowed and 5 denied jobs"
say "see: docker compose logs worker; docker compose run --rm operator warden dlq stats $queue"
