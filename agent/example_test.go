package agent_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/est/esttest"
)

// exampleTB lets examples use the test helpers, which take a testing.TB,
// outside of a test: failures panic, cleanups are collected.
type exampleTB struct {
	testing.TB
	cleanups []func()
}

func (e *exampleTB) Helper()                   {}
func (e *exampleTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (e *exampleTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (e *exampleTB) Cleanup(f func())          { e.cleanups = append(e.cleanups, f) }
func (e *exampleTB) done() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

// exampleServer starts a throwaway Ward EST server that accepts the
// enrollment token "secret-from-the-factory" for device pump-0042.
func exampleServer() (url string, caBundle []byte, stop func()) {
	tb := &exampleTB{}
	ca := esttest.NewCA(tb, "acme")
	ca.AddToken("secret-from-the-factory", "pump-0042")
	pki := newServerPKI(tb)
	return startEST(tb, ca, pki), pki.PEM, tb.done
}

func ExampleEnroll() {
	server, caBundle, stop := exampleServer()
	defer stop()
	dir, _ := os.MkdirTemp("", "ward-agent-example")
	defer os.RemoveAll(dir)

	ks, err := keystore.Open("file:" + filepath.Join(dir, "keys"))
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()
	id, err := agent.Enroll(context.Background(), agent.Config{
		Server:   server,
		CABundle: caBundle,
		Tenant:   "acme",
		Device:   "pump-0042",
		Keystore: ks,
		StateDir: filepath.Join(dir, "state"),
	}, agent.Token("secret-from-the-factory"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id.Certificate.URIs[0], id.KeyName)
	// Output: urn:ward:acme:device:pump-0042 device-1
}

func ExampleAgent_Renew() {
	server, caBundle, stop := exampleServer()
	defer stop()
	dir, _ := os.MkdirTemp("", "ward-agent-example")
	defer os.RemoveAll(dir)
	ks, _ := keystore.Open("file:" + filepath.Join(dir, "keys"))
	defer ks.Close()
	cfg := agent.Config{Server: server, CABundle: caBundle, Tenant: "acme", Device: "pump-0042",
		Keystore: ks, StateDir: filepath.Join(dir, "state")}
	if _, err := agent.Enroll(context.Background(), cfg, agent.Token("secret-from-the-factory")); err != nil {
		log.Fatal(err)
	}

	// After a restart, New needs only the keystore and the state directory.
	a, err := agent.New(agent.Config{Keystore: ks, StateDir: cfg.StateDir})
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	// Run would renew at two thirds of the lifetime; Renew does it now.
	if err := a.Renew(context.Background()); err != nil {
		log.Fatal(err)
	}
	_, err = ks.Load(context.Background(), "device-1")
	fmt.Println(a.Status().KeyName, "old key gone:", err != nil)
	// Output: device-2 old key gone: true
}

func ExampleAgent_GetClientCertificate() {
	server, caBundle, stop := exampleServer()
	defer stop()
	dir, _ := os.MkdirTemp("", "ward-agent-example")
	defer os.RemoveAll(dir)
	ks, _ := keystore.Open("file:" + filepath.Join(dir, "keys"))
	defer ks.Close()
	cfg := agent.Config{Server: server, CABundle: caBundle, Tenant: "acme", Device: "pump-0042",
		Keystore: ks, StateDir: filepath.Join(dir, "state")}
	if _, err := agent.Enroll(context.Background(), cfg, agent.Token("secret-from-the-factory")); err != nil {
		log.Fatal(err)
	}
	a, err := agent.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()

	// An MQTT or HTTPS client asks for the credential at each handshake,
	// so it always presents the latest certificate.
	tlsConfig := &tls.Config{GetClientCertificate: a.GetClientCertificate, MinVersion: tls.VersionTLS12}
	c, _ := tlsConfig.GetClientCertificate(&tls.CertificateRequestInfo{})
	fmt.Println(c.Leaf.Subject.CommonName)
	// Output: pump-0042
}
