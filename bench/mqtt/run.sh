#!/usr/bin/env bash
# Compare Ward's device gateway with Debian's mosquitto on this machine, with
# the same certificates and the same load generator, and print:
#   server CPU µs per mTLS connect, KB per idle connection at N connections,
#   QoS 0 and QoS 1 ingest messages/s, and Ward/mosquitto ratios.
# The machine is shared, so connect and ingest runs alternate between the
# two brokers for ROUNDS rounds and the medians are compared.
# Usage: bench/mqtt/run.sh [idle-connections (default 10000)]
set -euo pipefail

N_IDLE=${1:-10000}
N_CONNECT=${N_CONNECT:-1000}
CLIENTS=${CLIENTS:-20}
MSGS=${MSGS:-10000}
ROUNDS=${ROUNDS:-3}
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
	: >"$WORK/ward.addr"
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
	mosquitto -c "$WORK/mosquitto.conf" 2>/dev/null &
	MOSQ_PID=$!
	PIDS+=("$MOSQ_PID")
	MOSQ_ADDR=127.0.0.1:$port
	for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

OUT=$WORK/results.txt
lg() { "$WORK/loadgen" "$@" -certs "$WORK/certs" | tee -a "$OUT"; }

echo "== idle memory, each broker fresh =="
start_ward
lg idle -label ward -addr "$WARD_ADDR" -pid "$WARD_PID" -n "$N_IDLE" -c 16 -settle-signal 10
stop "$WARD_PID"
start_mosquitto
lg idle -label mosquitto -addr "$MOSQ_ADDR" -pid "$MOSQ_PID" -n "$N_IDLE" -c 16
stop "$MOSQ_PID"

echo "== connect and ingest, alternating, $ROUNDS rounds =="
start_ward
start_mosquitto
for r in $(seq "$ROUNDS"); do
	for b in ward mosquitto; do
		if [ "$b" = ward ]; then addr=$WARD_ADDR pid=$WARD_PID; else addr=$MOSQ_ADDR pid=$MOSQ_PID; fi
		lg connect -label "$b" -addr "$addr" -pid "$pid" -n "$N_CONNECT" -c 4
		lg ingest -label "$b" -addr "$addr" -pid "$pid" -qos 0 -clients "$CLIENTS" -msgs "$MSGS"
		lg ingest -label "$b" -addr "$addr" -pid "$pid" -qos 1 -clients "$CLIENTS" -msgs "$MSGS"
	done
done

python3 - "$OUT" <<'PY'
import re, statistics, sys
r = {}
def add(name, key, v):
    r.setdefault((name, key), []).append(v)
for line in open(sys.argv[1]):
    name = line.split()[0]
    if m := re.search(r"= ([\d.]+) KB/connection", line):
        add(name, "kb_settled" if "after GC" in line else "kb", float(m.group(1)))
    if m := re.search(r"= (\d+) µs/connect", line):
        add(name, "us", float(m.group(1)))
    if m := re.search(r"QoS (\d).* = (\d+) msg/s", line):
        add(name, "qos" + m.group(1), float(m.group(2)))
def med(name, k):
    v = r.get((name, k))
    return statistics.median(v) if v else None
def rng(name, k):
    v = r.get((name, k))
    return "%.0f-%.0f" % (min(v), max(v)) if v and len(v) > 1 else ""
print()
print("medians (range)                    %22s %22s %6s  goal" % ("ward", "mosquitto", "ratio"))
rows = [("server CPU µs per mTLS connect", "us", "<= 560 µs"),
        ("KB per idle connection", "kb", "<= mosquitto"),
        ("QoS 0 ingest msg/s", "qos0", ""),
        ("QoS 1 ingest msg/s", "qos1", ">= mosquitto")]
for label, k, goal in rows:
    w, m = med("ward", k), med("mosquitto", k)
    ratio = "%.2f" % (w / m) if w and m else "-"
    fw = "%.1f (%s)" % (w, rng("ward", k)) if w is not None else "-"
    fm = "%.1f (%s)" % (m, rng("mosquitto", k)) if m is not None else "-"
    print("%-34s %22s %22s %6s  %s" % (label, fw, fm, ratio, goal))
if med("ward", "kb_settled"):
    print("%-34s %22.1f" % ("KB per idle conn, ward after GC", med("ward", "kb_settled")))
PY
