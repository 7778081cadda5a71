#!/bin/sh
# Runs the PKI benchmarks and prints the figures. Usage: bench/pki.sh
# Needs: go; wrk (apt-get install wrk) for the loopback OCSP load test.
set -eu
cd "$(dirname "$0")/.."

echo "== load: $(cat /proc/loadavg) on $(nproc) cores (figures are per this contention) =="
echo "== Go benchmarks (internal/pki) =="
go test -run '^$' -bench 'BenchmarkIssue$|BenchmarkOCSPCached$' -benchtime 3s -count 1 ./internal/pki | grep -E '^Benchmark'
go test -run '^$' -bench 'BenchmarkCRL1M$' -benchtime 3x -count 1 ./internal/pki | grep -E '^Benchmark'
if [ "${PKI_BENCH_STDLIB:-}" != "" ]; then
	go test -run '^$' -bench 'BenchmarkCRLStdlib1M$' -benchtime 1x -count 1 ./internal/pki | grep -E '^Benchmark'
fi

echo "== OCSP cached GET over loopback =="
go build -o /tmp/ward-bench-ocsp ./bench/ocsp
if command -v wrk >/dev/null 2>&1; then
	/tmp/ward-bench-ocsp -serve >/tmp/ward-bench-ocsp.url &
	pid=$!
	trap 'kill $pid 2>/dev/null || true' EXIT
	while [ ! -s /tmp/ward-bench-ocsp.url ]; do sleep 0.1; done
	url=$(cat /tmp/ward-bench-ocsp.url)
	wrk -t 2 -c 64 -d 10s "$url" | sed -n 's/^Requests\/sec: *\(.*\)/ocsp cached GET (wrk, 2 threads, 64 conns): \1 responses\/s/p'
	kill $pid
else
	echo "wrk not installed; using the Go load generator"
	/tmp/ward-bench-ocsp -d 10s
fi
