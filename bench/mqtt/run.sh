#!/usr/bin/env bash
# Compare Ward's device gateway with Debian's mosquitto on this machine, with
# the same certificates and the same load generator, and print:
#   server CPU µs per mTLS connect, KB per idle connection at N connections,
#   QoS 0 and QoS 1 ingest messages/s, and Ward/mosquitto ratios.
# Usage: bench/mqtt/run.sh [idle-connections (default 10000)]
set -euo pipefail

N_IDLE=${1:-10000}
N_CONNECT=${N_CONNECT:-3000}
CLIENTS=${CLIENTS:-20}
MSGS=${MSGS:-5000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

command -v mosquitto >/dev/null || { echo "run.sh: mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((N_IDLE + 1000)) ]; then
	echo "run.sh: ulimit -n $(ulimit -n) is too low for $N_IDLE connections" >&2
	exit 1
fi

echo "building..."
(cd "$ROOT" && go build -o "$WORK/wardgw" ./bench/mqtt/wardgw && go build -o "$WORK/loadgen" ./bench/mqtt/loadgen)
"$WORK/loadgen" gencerts -certs "$WORK/certs" -n "$N_IDLE"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_ward() {
	# See wardgw's doc comment: smaller goroutine stacks per idle connection.
	GODEBUG=adaptivestackstart=0 "$WORK/wardgw" -certs "$WORK/certs" -addr 127.0.0.1:0 >"$WORK/ward.addr" 2>"$WORK/ward.log" &
	WARD_PID=$!
	PIDS+=("$WARD_PID")
	for _ in $(seq 100); do [ -s "$WORK/ward.addr" ] && break; sleep 0.05; done
	WARD_ADDR=$(head -1 "$WORK/ward.addr")
}

start_mosquitto() {
	local port
	port=$(free_port)
	cat >"$WORK/mosquitto.conf" <<CONF
per_listener_settings false
persistence false
log_dest none
max_connections -1
allow_anonymous false
user $(id -un)
listener $port 127.0.0.1
cafile $WORK/certs/client-cas.pem
certfile $WORK/certs/server.pem
keyfile $WORK/certs/server.key
require_certificate true
use_identity_as_username true
CONF
	mosquitto -c "$WORK/mosquitto.conf" &
	MOSQ_PID=$!
	PIDS+=("$MOSQ_PID")
	MOSQ_ADDR=127.0.0.1:$port
	for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

OUT=$WORK/results.txt
bench() { # name addr pid [settle-signal]
	local name=$1 addr=$2 pid=$3 settle=${4:-0}
	"$WORK/loadgen" idle -label "$name" -addr "$addr" -pid "$pid" -certs "$WORK/certs" -n "$N_IDLE" -c 16 -settle-signal "$settle" | tee -a "$OUT"
	"$WORK/loadgen" connect -label "$name" -addr "$addr" -pid "$pid" -certs "$WORK/certs" -n "$N_CONNECT" -c 4 | tee -a "$OUT"
	"$WORK/loadgen" ingest -label "$name" -addr "$addr" -pid "$pid" -certs "$WORK/certs" -qos 0 -clients "$CLIENTS" -msgs "$MSGS" | tee -a "$OUT"
	"$WORK/loadgen" ingest -label "$name" -addr "$addr" -pid "$pid" -certs "$WORK/certs" -qos 1 -clients "$CLIENTS" -msgs "$MSGS" | tee -a "$OUT"
}

echo "== ward (pid, fresh process) =="
start_ward
bench ward "$WARD_ADDR" "$WARD_PID" 10
stop "$WARD_PID"

echo "== mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') =="
start_mosquitto
bench mosquitto "$MOSQ_ADDR" "$MOSQ_PID"
stop "$MOSQ_PID"

python3 - "$OUT" <<'PY'
import re, sys
r = {}
for line in open(sys.argv[1]):
    name = line.split()[0]
    if m := re.search(r"= ([\d.]+) KB/connection", line):
        key = "kb_settled" if "after GC" in line else "kb"
        r[(name, key)] = float(m.group(1))
    if m := re.search(r"= (\d+) µs/connect", line):
        r[(name, "us")] = float(m.group(1))
    if m := re.search(r"QoS (\d).* = (\d+) msg/s", line):
        r[(name, "qos" + m.group(1))] = float(m.group(2))
print()
print("%-34s %12s %12s %8s  goal" % ("", "ward", "mosquitto", "ratio"))
rows = [("server CPU µs per mTLS connect", "us", "<= 560 µs"),
        ("KB per idle connection", "kb", "<= mosquitto"),
        ("QoS 0 ingest msg/s", "qos0", ""),
        ("QoS 1 ingest msg/s", "qos1", ">= mosquitto")]
for label, k, goal in rows:
    w, m = r.get(("ward", k)), r.get(("mosquitto", k))
    ratio = "%.2f" % (w / m) if w and m else "-"
    print("%-34s %12s %12s %8s  %s" % (label, w, m, ratio, goal))
if ("ward", "kb_settled") in r:
    print("%-34s %12s" % ("KB per idle conn (ward, after GC)", r[("ward", "kb_settled")]))
PY
