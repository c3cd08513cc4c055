#!/usr/bin/env bash
# The dispatcher end to end on the real path, on embedded defaults: a fresh SQLite database, a
# local Prefect server with its UI (broadcasts server), the service (broadcasts serve: the
# deployments and the signed webhook) and the CBC proxy simulator standing in for the four
# networks. Every event goes in through the signed webhook, as the service API sends it.
#
# DEMO_KEEP=1 (make demo-ui) leaves everything running afterwards, to click through the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
DEMO=$PWD/.demo
SIM_PORT=${DEMO_SIMULATOR_PORT:-9001}
PREFECT_PORT=${DEMO_PREFECT_PORT:-4209}
WEBHOOK_PORT=${DEMO_WEBHOOK_PORT:-8009}
KEEP=${DEMO_KEEP:-0}

PIDS=()
stop_all() {
    set +e
    kill $(jobs -p) 2>/dev/null  # the keep-running sleep of DEMO_KEEP=1
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null
    done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# start NAME COMMAND...: in its own process group, so stopping it stops its children too.
start() { local name=$1; shift; setsid "$@" > "$DEMO/$name.log" 2>&1 & PIDS+=("$!"); }
# wait_until NAME SECONDS CHECK...: until CHECK succeeds; a part that dies or hangs is one line.
wait_until() {
    local name=$1 seconds=$2; shift 2
    local pid=${PIDS[-1]}
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { tail -5 "$DEMO/$name.log" >&2; fail "$name exited; its log is $DEMO/$name.log"; }
        sleep 0.2
    done
    tail -5 "$DEMO/$name.log" >&2
    fail "$name did not come up within $seconds s; its log is $DEMO/$name.log"
}
json_field() { "$BIN/python" -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
fault() { curl -fsS -X POST "$SIM/faults" -H 'Content-Type: application/json' -d "$1" >/dev/null; }

for port in "$SIM_PORT" "$PREFECT_PORT" "$WEBHOOK_PORT"; do
    port_free "$port" || fail "port $port is in use: stop what uses it, or set DEMO_SIMULATOR_PORT, DEMO_PREFECT_PORT or DEMO_WEBHOOK_PORT"
done
rm -rf "$DEMO" && mkdir -p "$DEMO"

export DATABASE_URL="sqlite:///$DEMO/broadcasts.db"
export CBC_PROXY_ENDPOINT_URL="http://127.0.0.1:$SIM_PORT"
export PREFECT_HOME="$DEMO/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export WEBHOOK_SECRET
WEBHOOK_SECRET=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')
export BROADCAST_RETRY_DELAY_SCALE=0.1   # the production schedule is 1, 2, 4 … 240 s
export ROUTE_ADVICE_SECONDS=120   # 30 s in production; the demo's update and cancel may be further apart on a slow machine
SIM="http://127.0.0.1:$SIM_PORT/_simulator"
WEBHOOK="http://127.0.0.1:$WEBHOOK_PORT"

step "Migrate a fresh SQLite database"
"$BIN/broadcasts" db upgrade

step "Start the CBC proxy simulator (:$SIM_PORT), the Prefect server with its UI (:$PREFECT_PORT) and the service (webhook :$WEBHOOK_PORT)"
start simulator "$BIN/broadcasts" simulator --port "$SIM_PORT"
wait_until simulator 15 curl -fsS "$SIM/invocations"
start prefect-server "$BIN/broadcasts" server --port "$PREFECT_PORT"
wait_until prefect-server 90 curl -fsS "$PREFECT_API_URL/health"
start serve "$BIN/broadcasts" serve --webhook-port "$WEBHOOK_PORT"
wait_until serve 90 grep -q '^serving:' "$DEMO/serve.log"
wait_until serve 30 curl -fsS "$WEBHOOK/healthz"
sed 's/^/  /' "$DEMO/serve.log"

step "An alert, posted to the signed webhook and sent to all four networks"
CREATED=$("$BIN/broadcasts" event create --type alert --channel severe --json \
    --body "Flood warning: move to higher ground now." \
    --polygon "51.50,-0.12 51.52,-0.12 51.52,-0.10 51.50,-0.10" --finishes-in 2h)
ALERT=$(echo "$CREATED" | json_field broadcast_event_id)
MESSAGE=$(echo "$CREATED" | json_field broadcast_message_id)
"$BIN/broadcasts" trigger "$ALERT" --url "$WEBHOOK" --wait

step "A Welsh update (ŵ makes it cy-GB) while EE's first route (its first proxy to CBC cbc_a) answers HTTP 500: EE's goes out on the next route"
fault '{"function": "ee-1-proxy", "cbc_target": "cbc_a", "http_status": 500}'  # down until the demo ends
UPDATE=$("$BIN/broadcasts" event create --type update --message "$MESSAGE" --json \
    --body "Rhybudd llifogydd: symudwch i dir uwch nawr. Peidiwch ag yfed dŵr tap." | json_field broadcast_event_id)
"$BIN/broadcasts" trigger "$UPDATE" --url "$WEBHOOK" --wait

step "A cancel while both Vodafone proxies fail twice, so every route of its first attempt fails: retried until acknowledged"
fault '{"function": "vodafone-1-proxy", "function_error": "Unhandled", "times": 2}'
fault '{"function": "vodafone-2-proxy", "http_status": 503, "times": 2}'
CANCEL=$("$BIN/broadcasts" event create --type cancel --message "$MESSAGE" --json | json_field broadcast_event_id)
"$BIN/broadcasts" trigger "$CANCEL" --url "$WEBHOOK" --wait

step "EE's route for each event: the route advisor put a working route first for the cancel"
curl -fsS "$SIM/invocations" | "$BIN/python" -c '
import json, sys
calls = [c for c in json.load(sys.stdin) if c["function"].startswith("ee-") and c["payload"].get("message_type") != "test"]
for kind in ("alert", "update", "cancel"):
    tried = [c["function"] + "/" + c["payload"]["cbc_target"] + " " + c["outcome"]
             for c in calls if c["payload"]["message_type"] == kind]
    print(f"{kind}: " + ", then ".join(tried))
cancel = [c for c in calls if c["payload"]["message_type"] == "cancel"]
# The update found ee-1-proxy/cbc_b; a scheduled link test meanwhile may have found another.
if not cancel or cancel[0]["outcome"] != "ok" or (cancel[0]["function"], cancel[0]["payload"]["cbc_target"]) == ("ee-1-proxy", "cbc_a"):
    sys.exit("demo: the cancel did not go first to a route that worked: the route advisor was not used")
'

step "The alert posted again: the webhook answers with the same run, and nothing is sent again"
# Scheduled link tests may call the proxies meanwhile: count the calls of this alert only.
alert_calls() { curl -fsS "$SIM/invocations" | "$BIN/python" -c "import json,sys; print(sum(1 for c in json.load(sys.stdin) if c['payload'].get('message_type') == 'alert'))"; }
BEFORE=$(alert_calls)
"$BIN/broadcasts" trigger "$ALERT" --url "$WEBHOOK"
AFTER=$(alert_calls)
[ "$BEFORE" = "$AFTER" ] || fail "the repeated call sent something"
echo "alert calls before: $BEFORE, after: $AFTER"

step "The cancel's history for each network"
"$BIN/broadcasts" status "$CANCEL"

step "What the simulated proxies received"
curl -fsS "$SIM/invocations" | "$BIN/python" -c '
import json, sys
for call in json.load(sys.stdin):
    kind = call["payload"].get("message_type", "?")
    language = call["payload"].get("language", "-")  # a cancel carries none
    route = call["function"] + "/" + call["payload"].get("cbc_target", "-")
    print(call["received_at"], route.ljust(23), kind.ljust(7), language.ljust(8), call["outcome"])
'

step "How far apart the four networks' first calls of each event came"
curl -fsS "$SIM/invocations" | "$BIN/python" -c '
import json, sys
from datetime import datetime
first = {}
for call in json.load(sys.stdin):
    kind = call["payload"].get("message_type")
    if kind in ("alert", "update", "cancel"):
        first.setdefault(kind, {}).setdefault(call["function"].split("-")[0], datetime.fromisoformat(call["received_at"]))
for kind, calls in first.items():
    spread = (max(calls.values()) - min(calls.values())).total_seconds()
    print(f"{kind}: {len(calls)} networks, first calls within {spread:.3f} s of each other")
'
printf '\nDemo finished: alert, update (Welsh) and cancel, each posted to the signed webhook and acknowledged by every network.\n'
if [ "$KEEP" = 1 ]; then
    printf '\nEverything is still running. The Prefect UI: http://127.0.0.1:%s (runs, artifacts, Retry,\n' "$PREFECT_PORT"
    printf 'and Deployments > send-provider-message > Custom run). Post another event with:\n'
    printf '  WEBHOOK_SECRET=%s %s/broadcasts trigger EVENT_ID --url %s --wait\n' "$WEBHOOK_SECRET" "$BIN" "$WEBHOOK"
    printf 'Press Ctrl-C to stop everything.\n'
    while true; do sleep 3600 & wait $!; done  # `wait` lets the INT/TERM trap run at once
fi
