#!/usr/bin/env bash
# Server CPU per verified telemetry message through the MQTT gateway (QoS 1),
# for COSE_Mac0 and Ed25519 COSE_Sign1. Usage: bench/telemetry-gw.sh [DEVICES] [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d); trap 'rm -rf "$bin"' EXIT
go build -o "$bin/ward" ./cmd/ward
go run ./bench/telemetry-gw -ward "$bin/ward" -devices "${1:-20}" -messages "${2:-2000}"
