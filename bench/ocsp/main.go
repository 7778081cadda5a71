// Command ocsp measures Ward's OCSP responder on loopback: it starts an
// authority with an in-memory store, issues one device certificate and
// either serves its responder (-serve, for wrk) or also hammers the
// cached GET endpoint with keep-alive clients and prints responses/s.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/pki/pkitest"
	"github.com/wardiot/ward/wire"
)

func main() {
	serve := flag.Bool("serve", false, "only serve; print the OCSP GET URL and wait (for wrk)")
	dur := flag.Duration("d", 10*time.Second, "load duration")
	conns := flag.Int("c", 64, "concurrent keep-alive connections")
	flag.Parse()
	log.SetFlags(0)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	km := pki.NewFileKeyManager(pkitest.NewSealer())
	ctx := context.Background()
	a, err := pki.New(ctx, pki.Config{
		Store:   pkitest.NewMemStore(),
		Keys:    func(context.Context, string) (pki.KeyManager, error) { return km, nil },
		BaseURL: base,
	})
	if err != nil {
		log.Fatal(err)
	}
	tc, err := a.CreateTenantCAs(ctx, "bench", pki.ECDSAP256, km)
	if err != nil {
		log.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(wire.DeviceURI("bench", "dev-1"))
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}, URIs: []*url.URL{u}}, key)
	is, err := a.Issue(ctx, pki.IssueRequest{Tenant: "bench", Device: "dev-1", Profile: pki.ProfileDevice, CSR: csr})
	if err != nil {
		log.Fatal(err)
	}
	iss, _ := x509.ParseCertificate(tc.Issuing.CertDER)
	req, _ := ocsp.CreateRequest(is.Cert, iss, nil)
	target := a.OCSPURL(tc.Issuing.ID) + "/" + url.PathEscape(base64.StdEncoding.EncodeToString(req))
	go http.Serve(ln, a.Handler())

	// Warm the cache and check the answer.
	resp, err := http.Get(target)
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if r, err := ocsp.ParseResponseForCert(body, is.Cert, iss); err != nil || r.Status != ocsp.Good {
		log.Fatalf("bad warm-up response: %v", err)
	}
	if *serve {
		fmt.Println(target)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		<-sig
		return
	}

	var n atomic.Int64
	stop := time.Now().Add(*dur)
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns}
	client := &http.Client{Transport: tr}
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				resp, err := client.Get(target)
				if err != nil {
					log.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					n.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	el := time.Since(start)
	fmt.Printf("ocsp cached GET (Go client, same process, %d conns): %d responses in %.1fs = %.0f responses/s\n", *conns, n.Load(), el.Seconds(), float64(n.Load())/el.Seconds())
}
