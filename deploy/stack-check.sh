#!/usr/bin/env bash
# The compose stack, run for real against a Docker engine (`.ci/run` runs it):
#
#   1. `docker compose up` with deploy/compose/local.yaml: the broker, the development issuer,
#      two workers built from the Dockerfile and the demo; the demo's allowed jobs run, and each
#      of its denied jobs is in jobs.dlq with its reason (`warden dlq stats jobs --json`, as the
#      operator's broker user: the workers' user may not read dead letters).
#   2. The workers run as uid 10001, answer their health check, and `--scale worker=4` gives
#      four workers that each run jobs of a burst.
#   3. `docker compose stop worker` while a burst is published: every job ran once or is still
#      queued, the workers exited 0 within their stop grace period; started again, they run the
#      rest, each job once.
#   4. `docker compose down -v` leaves no container, network or volume of the project.
#
# Usage: deploy/stack-check.sh (as root where the engine must be installed or started).
# Where no image registry answers, the offline stand-ins of deploy/local-images.sh are used
# (WARDEN_STACK_IMAGES=standin forces them, =public forbids them). Where no Docker engine can be
# had it says so and exits 77. The project name is unique to the run; everything of it is removed
# at the end, whatever happened, and a dockerd it started is stopped.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

project="${WARDEN_STACK_PROJECT:-warden-stackcheck-$$}"
export COMPOSE_PROJECT_NAME="$project"
export COMPOSE_FILE=compose.yaml:deploy/compose/local.yaml
logs="${WARDEN_STACK_LOGS:-$(mktemp -d /tmp/warden-stack-check.XXXXXX)}"
mirror="${WARDEN_STANDIN_MIRROR:-http://deb.debian.org/debian}"
images="${WARDEN_STACK_IMAGES:-auto}"
burst=10000
NO_ENGINE=77
started_dockerd=""

say() { echo "stack-check: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
no_engine() {
  say "NO DOCKER ENGINE: $* -- the compose stack was NOT run"
  exit "$NO_ENGINE"
}

# until_true SECONDS WHAT COMMAND...: poll COMMAND every second until it succeeds.
until_true() {
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${limit}s"
    sleep 1
  done
}

compose() { docker compose "$@"; }

# --- the engine and Compose -----------------------------------------------------------------

engine() {
  if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
    [ "$(id -u)" -eq 0 ] || no_engine "docker is not installed and this is not root"
    say "installing Debian's docker.io"
    apt-get install -y -qq docker.io >"$logs/apt.log" 2>&1 ||
      { apt-get update -qq >>"$logs/apt.log" 2>&1 &&
        apt-get install -y -qq docker.io >>"$logs/apt.log" 2>&1; } ||
      no_engine "apt-get install docker.io failed: $(tail -n 1 "$logs/apt.log")"
  fi
  docker info >/dev/null 2>&1 && return
  [ "$(id -u)" -eq 0 ] || no_engine "no engine answers and this is not root to start one"
  say "starting dockerd (log: $logs/dockerd.log)"
  dockerd >"$logs/dockerd.log" 2>&1 &
  started_dockerd=$!
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$started_dockerd" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      no_engine "dockerd did not start: $(grep -iE 'level=(error|fatal)' "$logs/dockerd.log" |
        tail -n 1 || tail -n 1 "$logs/dockerd.log")"
    fi
    sleep 1
  done
}

# Compose v2 as a CLI plugin: Debian trixie's docker-compose package carries the static binary.
compose_plugin() {
  docker compose version >/dev/null 2>&1 && return
  [ "$(id -u)" -eq 0 ] || die "no docker compose plugin, and this is not root to install one"
  local arch work filename
  arch="$(dpkg --print-architecture)"
  work="$(mktemp -d)"
  say "installing Compose v2 from Debian trixie's docker-compose package"
  curl -fsS "$mirror/dists/trixie/main/binary-$arch/Packages.xz" -o "$work/Packages.xz" ||
    die "cannot fetch trixie's package index from $mirror"
  # awk reads the index to its end: leaving early would end xz with SIGPIPE, which pipefail
  # turns into a failure.
  filename="$(xz -dc "$work/Packages.xz" |
    awk '/^Package: docker-compose$/ {p = 1} p && !f && /^Filename:/ {print $2; f = 1} /^$/ {p = 0}')"
  [ -n "$filename" ] || die "trixie has no docker-compose package"
  curl -fsS "$mirror/$filename" -o "$work/compose.deb" || die "cannot fetch $mirror/$filename"
  dpkg-deb -x "$work/compose.deb" "$work/root"
  install -D -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$work"
  docker compose version >/dev/null || die "the docker compose plugin does not run"
}

# The public images if a registry answers, else the offline stand-ins.
choose_images() {
  if [ "$images" != standin ]; then
    if timeout 60 docker pull -q rabbitmq:4.0-management >/dev/null 2>&1 &&
      timeout 60 docker pull -q python:3.12-slim-bookworm >/dev/null 2>&1; then
      say "images: the public ones"
      return
    fi
    [ "$images" != public ] || die "WARDEN_STACK_IMAGES=public, but the registry does not answer"
  fi
  say "images: offline stand-ins (deploy/local-images.sh), no registry answers"
  eval "$(deploy/local-images.sh build)"
}

# --- what the containers say ----------------------------------------------------------------

workers() { compose ps -q worker; }

# ran WHAT: "<container> <message id>" for every job of the burst WHAT the actions ran, from the
# workers' JSON logs (the example action logs `report generated` with the report's name).
ran() {
  local id
  for id in $(compose ps -a -q worker); do
    docker logs "$id" 2>&1 | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("event") == "report generated" and event.get("report") == sys.argv[2]:
        print(sys.argv[1][:12], event["message_id"])
' "$id" "$1"
  done
}

count_ran() { ran "$1" | wc -l; }
ran_once() { ran "$1" | awk '{print $2}' | sort -u | wc -l; }
at_least() { [ "$("$1" "$2")" -ge "$3" ]; } # at_least count_ran|ran_once WHAT N

dlq_stats() {
  compose run --rm -T operator warden dlq stats jobs --json 2>>"$logs/operator.log"
}

# Messages waiting in the work queue and the retry queues (shared by every work queue; the stack has one).
queued() {
  compose exec -T rabbitmq rabbitmqctl -q list_queues name messages 2>>"$logs/rabbitmqctl.log" |
    awk '$1 == "jobs" || $1 ~ /^warden\.retry\./ {n += $2} END {print n + 0}'
}

publish() { # publish COUNT REPORT: as the demo's publisher, with a token from the issuer
  compose run --rm --no-deps -T demo sh -c \
    'WARDEN_CLIENT_SECRET=$REPORTER_CLIENT_SECRET exec warden publish jobs reports.generate \
      --payload "{\"report\": \"$2\"}" --count "$1" --token-url "$DEMO_TOKEN_URL" \
      --client-id reporter --scope reports:write' _ "$1" "$2"
}

healthy_workers() {
  local id n=0
  for id in $(workers); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && n=$((n + 1))
  done
  [ "$n" -eq "$1" ] && [ "$(workers | wc -l)" -eq "$1" ]
}

nothing_left() {
  local kind
  for kind in "ps -a" "network ls" "volume ls"; do
    # shellcheck disable=SC2086 # two words: the object kind and its listing command
    [ -z "$(docker $kind -q --filter "label=com.docker.compose.project=$project")" ] || return 1
  done
  [ -z "$(docker volume ls -q | grep -E "^${project}_" || true)" ] &&
    [ -z "$(docker network ls --format '{{.Name}}' | grep -E "^${project}_" || true)" ]
}

# --- the run --------------------------------------------------------------------------------

finish() {
  local status=$?
  trap - EXIT
  if [ "$status" -ne 0 ] && [ "$status" -ne "$NO_ENGINE" ] && docker info >/dev/null 2>&1; then
    say "the last lines of each service's log:"
    compose logs --no-color --tail 30 >&2 2>/dev/null || true
  fi
  if docker info >/dev/null 2>&1; then
    compose down -v --remove-orphans --timeout 10 >>"$logs/down.log" 2>&1 || true
  fi
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null && wait "$started_dockerd" 2>/dev/null || true
  fi
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "project $project, logs in $logs"
engine
compose_plugin
say "$(docker compose version)"
# The workers' stop grace period, in seconds, as compose.yaml sets it.
grace="$(compose config --format json | python3 -c '
import json, re, sys
period = json.load(sys.stdin)["services"]["worker"]["stop_grace_period"]
units = {"h": 3600, "m": 60, "s": 1}
print(int(sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([hms])(?!s)", period))))')"
[ "$grace" -gt 0 ] || die "no stop_grace_period for the workers in compose.yaml"
choose_images

say "1. docker compose up (local profile)"
compose build >"$logs/build.log" 2>&1 || die "docker compose build: $(tail -n 3 "$logs/build.log")"
compose up -d >"$logs/up.log" 2>&1 || die "docker compose up: $(tail -n 3 "$logs/up.log")"
demo_exit="$(timeout 180 docker wait "$(compose ps -a -q demo)")" ||
  die "the demo did not finish within 180s"
[ "$demo_exit" = 0 ] || die "the demo exited $demo_exit: $(compose logs --no-color --tail 5 demo)"
expected='{"jobs": {"action_unknown": 1, "audience_mismatch": 1, "scope_insufficient": 1,
  "signature_invalid": 1, "token_malformed": 1}}'
dlq_is() {
  python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]) != json.loads(sys.argv[2]))' \
    "$(dlq_stats)" "$1"
}
until_true 60 "the demo's denied jobs in jobs.dlq, one per reason" dlq_is "$expected"
worker_logs() { for id in $(workers); do docker logs "$id" 2>&1; done; }
allowed_ran() {
  [ "$(worker_logs | grep -c '"report generated"')" -eq 3 ] &&
    [ "$(worker_logs | grep -c '"report read"')" -eq 2 ]
}
until_true 60 "the demo's 5 allowed jobs ran (3 reports generated, 2 read)" allowed_ran
say "   the demo's 5 allowed jobs ran; jobs.dlq: $(dlq_stats | tr -d ' \n')"
# The broker stamps each message's arrival over whatever the publisher forged (rabbitmq.conf):
# a message sent with timestamp_in_ms = 1 comes back with the broker's time (as the management
# user of the definitions, to a queue of its own).
compose run --rm --no-deps -T operator python - >>"$logs/stamp.log" 2>&1 <<'PY' ||
import asyncio, time, aio_pika

async def main() -> None:
    async with await aio_pika.connect("amqp://warden:warden@rabbitmq:5672/") as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True)
        forged = aio_pika.Message(b"{}", headers={"timestamp_in_ms": 1}, timestamp=1)
        await channel.default_exchange.publish(forged, queue.name)
        while (message := await queue.get(fail=False)) is None:
            await asyncio.sleep(0.1)
        stamp = message.headers.get("timestamp_in_ms")
        assert isinstance(stamp, int) and abs(stamp - time.time() * 1000) < 60_000, stamp
        print(f"stamped {stamp}, not the forged 1")

asyncio.run(main())
PY
  die "the broker kept a forged arrival time: $(tail -n 1 "$logs/stamp.log")"
say "   the broker stamps arrivals: $(tail -n 1 "$logs/stamp.log")"

say "2. the workers: non-root, healthy, and scaled to 4"
until_true 60 "two healthy workers" healthy_workers 2
for id in $(workers); do
  uid="$(docker exec "$id" awk '/^Uid:/ {print $2}' /proc/1/status)"
  [ "$uid" = 10001 ] || die "worker ${id:0:12} runs as uid $uid, not 10001"
done
compose up -d --no-recreate --scale worker=4 worker >>"$logs/up.log" 2>&1 ||
  die "docker compose up --scale worker=4: $(tail -n 3 "$logs/up.log")"
until_true 90 "four healthy workers" healthy_workers 4
publish 400 scale >>"$logs/publish.log" 2>&1 ||
  die "publishing 400 jobs: $(tail -n 2 "$logs/publish.log")"
until_true 60 "the 400 jobs of the scaled burst ran" at_least count_ran scale 400
per_worker="$(ran scale | awk '{print $1}' | sort | uniq -c | awk '{print $1}' | tr '\n' ' ')"
[ "$(ran scale | awk '{print $1}' | sort -u | wc -l)" -eq 4 ] ||
  die "not every one of the 4 workers ran jobs of the burst (jobs per worker: $per_worker)"
say "   4 workers, uid 10001, healthy; jobs of a burst of 400 per worker: $per_worker"

say "3. docker compose stop worker during a burst of $burst jobs"
# Most of the burst first; once its jobs run, the workers are stopped (while busy with it) and
# the rest is published: what they no longer take stays queued, however fast they are.
first=$((burst * 4 / 5))
publish "$first" burst >>"$logs/publish.log" 2>&1 &
publisher=$!
until_true 60 "the burst's first jobs ran" at_least count_ran burst 100
stop_started="$(date +%s)"
{
  compose stop worker >>"$logs/stop.log" 2>&1 || echo failed >"$logs/stop.failed"
  echo $(($(date +%s) - stop_started)) >"$logs/stop.took"
} &
stopper=$!
publish "$((burst - first))" burst >>"$logs/publish.log" 2>&1 ||
  die "publishing the burst failed: $(tail -n 2 "$logs/publish.log")"
wait "$stopper"
[ ! -e "$logs/stop.failed" ] || die "docker compose stop worker failed"
stop_took="$(cat "$logs/stop.took")"
wait "$publisher" || die "publishing the burst failed: $(tail -n 2 "$logs/publish.log")"
for id in $(compose ps -a -q worker); do
  code="$(docker inspect -f '{{.State.ExitCode}}' "$id")"
  [ "$code" = 0 ] || die "worker ${id:0:12} exited $code on SIGTERM, not 0"
done
[ "$stop_took" -lt "$grace" ] ||
  die "the workers took ${stop_took}s to stop, the grace period is ${grace}s"
ran_total="$(count_ran burst)"
once="$(ran_once burst)"
[ "$ran_total" -eq "$once" ] || die "$((ran_total - once)) jobs of the burst ran twice"
# The broker's queue lengths are statistics it refreshes every few seconds: with no worker
# consuming, the count settles on what the queue holds.
all_accounted() {
  waiting="$(queued)"
  [ $((once + waiting)) -eq "$burst" ]
}
deadline=$((SECONDS + 30))
until all_accounted; do
  [ "$SECONDS" -lt "$deadline" ] ||
    die "of $burst jobs, $once ran and $waiting are queued: $((burst - once - waiting)) lost"
  sleep 1
done
[ "$waiting" -gt 0 ] || die "the burst was over before the workers stopped: nothing to show"
dlq_is "$expected" || die "jobs of the burst were dead-lettered: $(dlq_stats | tr -d ' \n')"
say "   stopped in ${stop_took}s, all exited 0; $once ran once, $waiting still queued, none lost"
compose start worker >>"$logs/up.log" 2>&1 || die "docker compose start worker failed"
until_true 120 "the rest of the burst ran once the workers were back" \
  at_least ran_once burst "$burst"
[ "$(count_ran burst)" -eq "$burst" ] || die "after the restart, jobs of the burst ran twice"
say "   started again: all $burst jobs ran, each once"

say "4. docker compose down -v"
compose down -v --remove-orphans >>"$logs/down.log" 2>&1 || die "docker compose down -v failed"
nothing_left || die "docker compose down -v left containers, networks or volumes of $project"
say "   nothing of $project is left"
say "PASSED"
