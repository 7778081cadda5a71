#!/usr/bin/env bash
# Enroll N simulated devices against a real ward server (SQLite, durable)
# twice: with one-time tokens minted through the API, and through a
# symmetric-key enrollment group. Prints ward-agent simulate's summary and
# the server CPU per device (user+system from /proc, whole run, token
# minting included for the token run).
# Usage: bench/simulate.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000}"
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/bin/" ./cmd/ward ./cmd/ward-agent
ward="$work/bin/ward"; agent="$work/bin/ward-agent"
"$ward" server --data "$work/data" --api-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --log-level warn 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do
  addr=$(sed -n 's/.*"api_addr": "\(.*\)".*/\1/p' "$work/data/ward.json" 2>/dev/null || true)
  case "$addr" in *:0|"") sleep 0.1 ;; *) break ;; esac
done
w() { "$ward" --data "$work/data" "$@"; }
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
w tenant create acme >/dev/null
admin=$(cat "$work/data/admin.token")

c0=$(cpu)
WARD_TOKEN="$admin" "$agent" simulate --server "https://$addr" --ca "$work/data/ca.pem" --tenant acme --count "$n" --device-prefix tok-
c1=$(cpu)
echo "  token enrollment: server CPU $(awk -v a="$c0" -v b="$c1" -v n="$n" -v hz="$hz" 'BEGIN{printf "%.2f", (b-a)*1000/hz/n}') ms per device (minting the token included)"

w group create sym --tenant acme --mechanism symmetric -o json | sed -n 's/.*"secret": "\(.*\)".*/\1/p' > "$work/group.key"
c0=$(cpu)
"$agent" simulate --server "https://$addr" --ca "$work/data/ca.pem" --tenant acme --label acme.sym --count "$n" \
  --group-key "$work/group.key" --device-prefix sym-
c1=$(cpu)
echo "  symmetric-key group: server CPU $(awk -v a="$c0" -v b="$c1" -v n="$n" -v hz="$hz" 'BEGIN{printf "%.2f", (b-a)*1000/hz/n}') ms per device"
echo "  devices registered: $(w device list --tenant acme -o json | grep -c '"id"')"
