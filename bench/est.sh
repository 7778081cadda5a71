#!/usr/bin/env bash
# EST enrollment throughput and server CPU per enrollment against a real
# ward server (SQLite, durable). Usage: bench/est.sh [N] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/ward" ./cmd/ward
go run ./bench/est -ward "$bin/ward" -n "${1:-1000}" -c "${2:-50}"
