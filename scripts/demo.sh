#!/usr/bin/env bash
# The dispatcher end to end on embedded defaults: a fresh SQLite database, flows run in-process
# against a local Prefect server (SQLite), and the CBC proxy simulator standing in for the four
# networks.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=.demo
PORT=${DEMO_SIMULATOR_PORT:-9001}
PREFECT_PORT=${DEMO_PREFECT_PORT:-4209}
rm -rf "$DEMO" && mkdir -p "$DEMO"

export DATABASE_URL="sqlite:///$PWD/$DEMO/broadcasts.db"
export CBC_PROXY_ENDPOINT_URL="http://127.0.0.1:$PORT"
export PREFECT_HOME="$PWD/$DEMO/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export BROADCAST_RETRY_DELAY_SCALE=0.1   # the production schedule is 1, 2, 4 … 240 s
SIM="http://127.0.0.1:$PORT/_simulator"

step() { printf '\n== %s\n' "$*"; }
event_id() { "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["broadcast_event_id"])'; }
message_id() { "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["broadcast_message_id"])'; }
fault() { curl -fsS -X POST "$SIM/faults" -H 'Content-Type: application/json' -d "$1" >/dev/null; }

step "Migrate a fresh SQLite database"
"$BIN/broadcasts" db upgrade

step "Start the CBC proxy simulator on port $PORT and a local Prefect server on port $PREFECT_PORT"
"$BIN/broadcasts" simulator --port "$PORT" > "$DEMO/simulator.log" 2>&1 &
SIMULATOR_PID=$!
# One local server for every step (each `send-event` would otherwise start a temporary one).
setsid "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" --no-ui --analytics-off \
    > "$DEMO/prefect-server.log" 2>&1 &
PREFECT_PID=$!
trap 'kill $SIMULATOR_PID 2>/dev/null; kill -- -$PREFECT_PID 2>/dev/null; true' EXIT
for _ in $(seq 50); do grep -q listening "$DEMO/simulator.log" && break; sleep 0.1; done
cat "$DEMO/simulator.log"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
for _ in $(seq 120); do curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break; sleep 0.5; done
echo "Prefect server at $PREFECT_API_URL"

step "An alert, sent to all four networks"
CREATED=$("$BIN/broadcasts" event create --type alert --channel severe --json \
    --body "Flood warning: move to higher ground now." \
    --polygon "51.50,-0.12 51.52,-0.12 51.52,-0.10 51.50,-0.10" --finishes-in 2h)
ALERT=$(echo "$CREATED" | event_id)
MESSAGE=$(echo "$CREATED" | message_id)
"$BIN/broadcasts" send-event "$ALERT"

step "A Welsh update (ŵ makes it cy-GB) while EE's primary proxy answers HTTP 500: EE fails over to its second proxy"
fault '{"function": "ee-1-proxy", "http_status": 500, "times": 1}'
UPDATE=$("$BIN/broadcasts" event create --type update --message "$MESSAGE" --json \
    --body "Rhybudd llifogydd: symudwch i dir uwch nawr. Peidiwch ag yfed dŵr tap." | event_id)
"$BIN/broadcasts" send-event "$UPDATE"

step "A cancel while both Vodafone proxies fail twice: retried until acknowledged"
fault '{"function": "vodafone-1-proxy", "function_error": "Unhandled", "times": 2}'
fault '{"function": "vodafone-2-proxy", "http_status": 503, "times": 2}'
CANCEL=$("$BIN/broadcasts" event create --type cancel --message "$MESSAGE" --json | event_id)
"$BIN/broadcasts" send-event "$CANCEL"

step "Sending the alert again sends nothing: every network already acknowledged it"
"$BIN/broadcasts" send-event "$ALERT"

step "The cancel's history for each network"
"$BIN/broadcasts" status "$CANCEL"

step "What the simulated proxies received"
curl -fsS "$SIM/invocations" | "$BIN/python" -c '
import json, sys
for call in json.load(sys.stdin):
    kind = call["payload"].get("message_type", "?")
    language = call["payload"].get("language", "-")  # a cancel carries none
    print(call["received_at"], call["function"].ljust(17), kind.ljust(7), language.ljust(8), call["outcome"])
'
printf '\nDemo finished: alert, update (Welsh) and cancel acknowledged by every network.\n'
printf 'Not yet built: deployments with a worker, the authenticated webhook, scheduled link tests.\n'
