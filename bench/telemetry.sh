#!/usr/bin/env bash
# Telemetry ingest cost per message on this machine: the full Verifier path
# (parse, key lookup, MAC or signature, timestamp, replay window, JSON
# decode and schema validation), next to the bare signature check.
# Goals (server CPU per message): COSE_Mac0 <= 15.9 us, EdDSA COSE_Sign1 <= 56 us.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${BENCH_N:-20000x}
go test -run '^$' -bench 'Verify|Baseline' -benchtime "$n" -count "${BENCH_COUNT:-3}" ./internal/telemetry |
awk '/^Benchmark/ { name=$1; sub(/-[0-9]+$/, "", name); sum[name]+=$3; cnt[name]++ }
END {
  goal["BenchmarkVerifyMac0"]=15900; goal["BenchmarkVerifySign1Ed25519"]=56000
  for (k in sum) {
    avg=sum[k]/cnt[k]
    g = (k in goal) ? sprintf("goal %6.1f us  %s", goal[k]/1000, (avg<=goal[k]?"met":"NOT met")) : ""
    printf "%-34s %9.1f us/msg  %s\n", k, avg/1000, g
  }
}' | sort
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (figures scale with contention)"
