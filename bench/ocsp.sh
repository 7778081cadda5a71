#!/usr/bin/env bash
# OCSP responses per second from a real ward server (cached responses, GET,
# no nonce) with wrk on loopback, both cores shared by server and load
# generator. Usage: bench/ocsp.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench/ocsp.sh: wrk not installed (apt-get install wrk)" >&2; exit 1; }
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/ward" ./cmd/ward
"$work/ward" server --data "$work/data" --api-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --log-level warn 2>"$work/log" &
pid=$!
for _ in $(seq 100); do
  addr=$(sed -n 's/.*"api_addr": "\(.*\)".*/\1/p' "$work/data/ward.json" 2>/dev/null || true)
  case "$addr" in *:0|"") sleep 0.1 ;; *) break ;; esac
done
w() { "$work/ward" --data "$work/data" "$@"; }
w tenant create acme >/dev/null
w ca chain --tenant acme > "$work/chain.pem"
awk '/BEGIN/{n++} n==1' "$work/chain.pem" > "$work/issuing.pem"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/k.pem" -out "$work/d.csr" -subj /CN=d1 2>/dev/null
w cert issue --tenant acme --device d1 --csr "$work/d.csr" --out "$work/d.pem" >/dev/null
url=$(openssl x509 -in "$work/d.pem" -noout -ocsp_uri)
openssl ocsp -issuer "$work/issuing.pem" -cert "$work/d.pem" -no_nonce -reqout "$work/req.der" >/dev/null 2>&1
b64=$(base64 -w0 "$work/req.der" | sed 's/+/%2B/g; s/\//%2F/g; s/=/%3D/g')
curl -sf "$url/$b64" -o "$work/resp.der"
openssl ocsp -respin "$work/resp.der" -CAfile <(awk '/BEGIN/{n++} n==2' "$work/chain.pem") -verify_other "$work/issuing.pem" -resp_text 2>&1 | grep -q "Cert Status: good" || { echo "OCSP answer not good" >&2; exit 1; }
echo "load: $(cat /proc/loadavg)"
wrk -t 2 -c 64 -d "${1:-10}s" "$url/$b64" | sed -n 's/^Requests\/sec: *\(.*\)/OCSP cached GET from ward server (wrk -t2 -c64): \1 responses\/s/p; s/^ *Latency/  latency/p'
