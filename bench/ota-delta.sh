#!/usr/bin/env bash
# OTA delta formats on a 32 MiB firmware image made of Go binaries, where
# v2 differs from v1 by a one-line change in one program (rebuilt): patch
# size, make time and peak RSS, apply time and peak RSS, for Ward's zstd
# raw-dictionary deltas (internal/ota/delta), Debian's bsdiff/bspatch and
# xdelta3, and the zstd CLI's --patch-from for reference. Every apply is
# checked by SHA-256 against v2.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in bsdiff bspatch xdelta3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y bsdiff xdelta3 time)"; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
size=$((32 << 20))

# The application binary, built twice with a one-line difference.
mkdir -p "$tmp/app"
cat >"$tmp/app/main.go" <<'GO'
package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

var version = "VERSION"

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"version": version})
	})
	srv := &http.Server{Addr: os.Getenv("ADDR"), TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13}}
	fmt.Println(srv.ListenAndServe())
}
GO
(cd "$tmp/app" && cat >go.mod <<<'module app' && go build -trimpath -o ../app1 . \
  && sed -i 's|^\tsrv := |\tfmt.Fprintln(os.Stderr, "starting", version, len(os.Args)); srv := |' main.go && go build -trimpath -o ../app2 .)

# Image = the application + the Go toolchain's binaries (a root
# filesystem's worth of code), cut to 32 MiB.
tools=$(ls "$(go env GOROOT)"/pkg/tool/"$(go env GOOS)_$(go env GOARCH)"/* | sort)
for v in 1 2; do
  { cat "$tmp/app$v" $tools || true; } | head -c "$size" >"$tmp/v$v.img"
done
diffpct=$({ cmp -l "$tmp/v1.img" "$tmp/v2.img" || true; } | wc -l | awk -v s="$size" '{printf "%.1f", 100*$1/s}')
want=$(sha256sum <"$tmp/v2.img" | cut -d' ' -f1)
go build -o "$tmp/otadelta" ./bench/otadelta

# measure NAME -- CMD...: wall seconds and peak RSS (MiB) via /usr/bin/time.
measure() {
  /usr/bin/time -f '%e %M' -o "$tmp/t" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
  awk '{printf "%6.2f s %6.1f MiB", $1, $2/1024}' "$tmp/t"
}
check() { [ "$(sha256sum <"$1" | cut -d' ' -f1)" = "$want" ] && echo ok || echo MISMATCH; }

printf '%-22s %12s   %-20s   %-20s %s\n' format patch make apply verified
row() { # name patchfile makeout applyout outfile
  printf '%-22s %9.2f MB   %-20s   %-20s %s\n' "$1" "$(stat -c %s "$2" | awk '{print $1/1e6}')" "$3" "$4" "$(check "$5")"
}

m=$(measure "$tmp/otadelta" make "$tmp/v1.img" "$tmp/v2.img" "$tmp/p.zst")
a=$(measure "$tmp/otadelta" apply "$tmp/v1.img" "$tmp/p.zst" "$tmp/o.zst" "$size")
row "ward zstd raw-dict" "$tmp/p.zst" "$m" "$a" "$tmp/o.zst"

m=$(measure bsdiff "$tmp/v1.img" "$tmp/v2.img" "$tmp/p.bsdiff")
a=$(measure bspatch "$tmp/v1.img" "$tmp/o.bsdiff" "$tmp/p.bsdiff")
row "bsdiff 4.3" "$tmp/p.bsdiff" "$m" "$a" "$tmp/o.bsdiff"

m=$(measure xdelta3 -e -9 -f -B "$size" -s "$tmp/v1.img" "$tmp/v2.img" "$tmp/p.xd3")
a=$(measure xdelta3 -d -f -B "$size" -s "$tmp/v1.img" "$tmp/p.xd3" "$tmp/o.xd3")
row "xdelta3 -9" "$tmp/p.xd3" "$m" "$a" "$tmp/o.xd3"

if command -v zstd >/dev/null; then
  m=$(measure zstd -q -f -19 --long=26 --patch-from="$tmp/v1.img" "$tmp/v2.img" -o "$tmp/p.cli")
  a=$(measure zstd -q -f -d --long=26 --patch-from="$tmp/v1.img" "$tmp/p.cli" -o "$tmp/o.cli")
  row "zstd CLI --patch-from" "$tmp/p.cli" "$m" "$a" "$tmp/o.cli"
fi
echo "image $((size >> 20)) MiB; ${diffpct}% of byte positions differ (the grown program shifts everything after it)"

echo "Go benchmark (same pair, in-process):"
WARD_DELTA_OLD="$tmp/v1.img" WARD_DELTA_NEW="$tmp/v2.img" \
  go test -run '^$' -bench . -benchtime "${BENCH_N:-2x}" ./internal/ota/delta | grep '^Benchmark'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (figures scale with contention)"
