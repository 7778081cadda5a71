// Command wardgw runs Ward's device gateway alone, with certificates from a
// directory written by "loadgen gencerts", for benchmarks. It admits every
// device the test CA issued and counts what it ingests. It is not the Ward
// server: there is no store, no revocation feed and no telemetry pipeline.
//
// Run it with GODEBUG=adaptivestackstart=0 (run.sh does): the runtime
// otherwise sizes new goroutine stacks by the average stack in use, and
// every idle connection's two goroutines keep the larger size (measured:
// 12 KB vs 5 KB per goroutine at 5,000 idle connections). It is not a
// //go:debug setting, so it must come from the environment.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync/atomic"
	"syscall"

	"github.com/wardiot/ward/internal/broker"
)

type trust struct {
	pool   *x509.CertPool
	issuer *x509.Certificate
	tenant string
}

func (t *trust) IssuerPool() *x509.CertPool { return t.pool }
func (t *trust) TenantForIssuer(c *x509.Certificate) (string, bool) {
	return t.tenant, c.Equal(t.issuer)
}

type gate struct{}

func (gate) Check(broker.Identity) (bool, error) { return false, nil }

type ingest struct{ n atomic.Int64 }

func (i *ingest) Deliver(context.Context, broker.Identity, string, []byte, byte) error {
	i.n.Add(1)
	return nil
}

func main() {
	dir := flag.String("certs", "", "directory written by loadgen gencerts")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this loopback address")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here until SIGTERM")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("wardgw: ")

	srvCert, err := tls.LoadX509KeyPair(filepath.Join(*dir, "server.pem"), filepath.Join(*dir, "server.key"))
	if err != nil {
		log.Fatal(err)
	}
	issuerPEM, err := os.ReadFile(filepath.Join(*dir, "issuing.pem"))
	if err != nil {
		log.Fatal(err)
	}
	blk, _ := pem.Decode(issuerPEM)
	if blk == nil {
		log.Fatal("issuing.pem holds no certificate")
	}
	issuer, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(issuer)

	ing := &ingest{}
	b, err := broker.New(broker.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &srvCert, nil },
		// Benchmarks measure the gateway, not the limiter's refusals.
		DeviceLimits: broker.Limits{MessagesPerSecond: 1e9, BytesPerSecond: 1e12, ConnectsPerMinute: 1e9},
	}, broker.Deps{Trust: &trust{pool: pool, issuer: issuer, tenant: "bench"}, Gate: gate{}, Ingest: ing})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	if *pprofAddr != "" {
		go func() { log.Println(http.ListenAndServe(*pprofAddr, nil)) }()
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	go func() {
		for s := range sig {
			if s == syscall.SIGUSR1 {
				// Settle the heap before an RSS reading, as a long-running
				// process's scavenger would.
				runtime.GC()
				debug.FreeOSMemory()
				continue
			}
			if *cpuprofile != "" {
				pprof.StopCPUProfile()
			}
			fmt.Fprintf(os.Stderr, "wardgw: ingested %d messages\n", ing.n.Load())
			b.Close()
			os.Exit(0)
		}
	}()
	fmt.Println(ln.Addr().String()) // the script reads the port from here
	if err := b.Serve(ln); err != nil && err != broker.ErrClosed {
		log.Fatal(err)
	}
}
