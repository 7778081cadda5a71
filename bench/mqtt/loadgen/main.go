// Command loadgen measures an MQTT-over-mTLS broker from outside: CPU per
// connect, memory per idle connection and ingest throughput. It reads the
// server's CPU time and RSS from /proc/<pid>, so it must run on the same
// machine. It speaks just enough MQTT 3.1.1 (CONNECT, PUBLISH, PUBACK,
// DISCONNECT) to drive the broker without measuring a client library.
//
//	loadgen gencerts -certs D -n 10000
//	loadgen connect  -addr A -pid P -certs D -n 3000
//	loadgen idle     -addr A -pid P -certs D -n 10000
//	loadgen ingest   -addr A -pid P -certs D -qos 1 -clients 20 -msgs 5000
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadgen: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: loadgen gencerts|connect|idle|ingest [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	dir := fs.String("certs", "", "certificate directory")
	addr := fs.String("addr", "", "broker address host:port")
	pid := fs.Int("pid", 0, "broker process ID (for /proc)")
	n := fs.Int("n", 1000, "connections (or devices for gencerts)")
	conc := fs.Int("c", 8, "concurrent connects")
	qos := fs.Int("qos", 1, "ingest QoS")
	clients := fs.Int("clients", 20, "ingest clients")
	msgs := fs.Int("msgs", 5000, "messages per ingest client")
	window := fs.Int("window", 10, "unacknowledged QoS 1 messages per client")
	curve := fs.String("curve", "x25519", "TLS key exchange: x25519 or default (Go's, with X25519MLKEM768)")
	label := fs.String("label", "", "name printed with results")
	hold := fs.Duration("hold", 0, "keep idle connections open this long after measuring (for profiling)")
	settle := fs.Int("settle-signal", 0, "signal sent to pid before the settled RSS reading (10 = SIGUSR1); 0 = none")
	if err := fs.Parse(args); err != nil {
		log.Fatal(err)
	}
	if cmd == "gencerts" {
		gencerts(*dir, *n)
		return
	}
	lg := &loadgen{addr: *addr, pid: *pid, label: *label}
	lg.load(*dir, *curve)
	switch cmd {
	case "connect":
		lg.connect(*n, *conc)
	case "idle":
		lg.idle(*n, *conc, syscall.Signal(*settle), *hold)
	case "ingest":
		lg.ingest(byte(*qos), *clients, *msgs, *window)
	default:
		log.Fatalf("unknown command %q", cmd)
	}
}

type device struct {
	id   string
	cert tls.Certificate
}

type loadgen struct {
	addr, label string
	pid         int
	devs        []device
	tlsCfg      *tls.Config
}

func (lg *loadgen) load(dir, curve string) {
	caPEM, err := os.ReadFile(filepath.Join(dir, "server-ca.pem"))
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	lg.tlsCfg = &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12, ClientSessionCache: nil}
	if curve == "x25519" {
		// Debian's mosquitto (OpenSSL 3.0) cannot do hybrid post-quantum
		// key exchange; use the same group for both brokers.
		lg.tlsCfg.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	data, err := os.ReadFile(filepath.Join(dir, "devices.pem"))
	if err != nil {
		log.Fatal(err)
	}
	var certDER []byte
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			certDER = blk.Bytes
		case "EC PRIVATE KEY":
			key, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				log.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(certDER)
			if err != nil {
				log.Fatal(err)
			}
			lg.devs = append(lg.devs, device{id: leaf.Subject.CommonName,
				cert: tls.Certificate{Certificate: [][]byte{certDER}, PrivateKey: key, Leaf: leaf}})
		}
	}
	if len(lg.devs) == 0 {
		log.Fatal("no devices in devices.pem")
	}
}

// cpu returns the process's user+system CPU time.
func cpu(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		log.Fatal(err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 (1-based), in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// rss returns the process's resident set size in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	log.Fatal("no VmRSS")
	return 0
}

type client struct {
	c net.Conn
	r *bufio.Reader
}

func (lg *loadgen) dial(d device) (*client, error) {
	cfg := lg.tlsCfg.Clone()
	cfg.Certificates = []tls.Certificate{d.cert}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", lg.addr, cfg)
	if err != nil {
		return nil, err
	}
	cl := &client{c: c, r: bufio.NewReader(c)}
	if _, err := c.Write(connectPacket(d.id)); err != nil {
		c.Close()
		return nil, err
	}
	var ack [4]byte
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(cl.r, ack[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("reading CONNACK: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	if ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK % x", ack)
	}
	return cl, nil
}

func remLen(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

func str(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func connectPacket(id string) []byte {
	body := append(str("MQTT"), 4, 0x02, 0, 60) // v3.1.1, clean session, keepalive 60 s
	body = append(body, str(id)...)
	return append(append([]byte{0x10}, remLen(len(body))...), body...)
}

func publishPacket(topic string, payload []byte, qos byte, pid uint16) []byte {
	body := str(topic)
	if qos > 0 {
		body = append(body, byte(pid>>8), byte(pid))
	}
	body = append(body, payload...)
	return append(append([]byte{0x30 | qos<<1}, remLen(len(body))...), body...)
}

var disconnectPacket = []byte{0xe0, 0}

func (lg *loadgen) connect(n, conc int) {
	// Warm up: the first handshakes pay for lazy initialisation.
	for i := 0; i < min(20, n); i++ {
		if c, err := lg.dial(lg.devs[i%len(lg.devs)]); err == nil {
			c.c.Write(disconnectPacket)
			c.c.Close()
		}
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	cpu0, t0 := cpu(lg.pid), time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c, err := lg.dial(lg.devs[int(i)%len(lg.devs)])
				if err != nil {
					failed.Add(1)
					continue
				}
				c.c.Write(disconnectPacket)
				// Wait for the broker to close, so its teardown is counted.
				_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.r.ReadByte()
				c.c.Close()
			}
		}()
	}
	wg.Wait()
	el, cpuUsed := time.Since(t0), cpu(lg.pid)-cpu0
	ok := n - int(failed.Load())
	if ok == 0 {
		log.Fatal("every connect failed")
	}
	fmt.Printf("%s connect: %d mTLS connects (%d failed) in %v, %.0f/s, server CPU %v = %.0f µs/connect\n",
		lg.label, ok, failed.Load(), el.Round(time.Millisecond), float64(ok)/el.Seconds(), cpuUsed,
		float64(cpuUsed.Microseconds())/float64(ok))
}

func (lg *loadgen) idle(n, conc int, settle syscall.Signal, hold time.Duration) {
	if n > len(lg.devs) {
		log.Fatalf("need %d devices, have %d", n, len(lg.devs))
	}
	rss0 := rss(lg.pid)
	conns := make([]*client, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c, err := lg.dial(lg.devs[i])
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	open := 0
	for _, c := range conns {
		if c != nil {
			open++
		}
	}
	if err := firstErr.Load(); err != nil {
		log.Printf("%s idle: first error: %v", lg.label, err)
	}
	time.Sleep(2 * time.Second) // let the broker finish its per-connection setup
	rss1 := rss(lg.pid)
	fmt.Printf("%s idle: %d connections, RSS %.1f MiB -> %.1f MiB = %.1f KB/connection\n",
		lg.label, open, float64(rss0)/(1<<20), float64(rss1)/(1<<20), float64(rss1-rss0)/1000/float64(open))
	if settle != 0 {
		_ = syscall.Kill(lg.pid, settle)
		time.Sleep(2 * time.Second)
		rss2 := rss(lg.pid)
		fmt.Printf("%s idle: after GC and scavenge: RSS %.1f MiB = %.1f KB/connection\n",
			lg.label, float64(rss2)/(1<<20), float64(rss2-rss0)/1000/float64(open))
	}
	time.Sleep(hold)
	for _, c := range conns {
		if c != nil {
			c.c.Write(disconnectPacket)
			c.c.Close()
		}
	}
}

func (lg *loadgen) ingest(qos byte, clients, msgs, window int) {
	if clients > len(lg.devs) {
		log.Fatalf("need %d devices", clients)
	}
	cs := make([]*client, clients)
	for i := range cs {
		c, err := lg.dial(lg.devs[i])
		if err != nil {
			log.Fatal(err)
		}
		cs[i] = c
	}
	payload := make([]byte, 64)
	var wg sync.WaitGroup
	var errs atomic.Int64
	cpu0, t0 := cpu(lg.pid), time.Now()
	for i, c := range cs {
		wg.Add(1)
		go func(dev string, c *client) {
			defer wg.Done()
			if err := run(c, "ward/v1/"+dev+"/telemetry/bench", payload, qos, msgs, window); err != nil {
				errs.Add(1)
				log.Printf("client %s: %v", dev, err)
			}
		}(lg.devs[i].id, c)
	}
	wg.Wait()
	el, cpuUsed := time.Since(t0), cpu(lg.pid)-cpu0
	total := clients * msgs
	fmt.Printf("%s ingest QoS %d: %d clients x %d msgs (64 B) in %v = %.0f msg/s, server CPU %.2f µs/msg (%d client errors)\n",
		lg.label, qos, clients, msgs, el.Round(time.Millisecond), float64(total)/el.Seconds(),
		float64(cpuUsed.Microseconds())/float64(total), errs.Load())
	for _, c := range cs {
		c.c.Write(disconnectPacket)
		c.c.Close()
	}
}

// run publishes msgs messages. QoS 1 keeps up to window unacknowledged;
// QoS 0 ends with one QoS 1 message whose PUBACK proves that the broker
// has processed everything before it on this connection.
func run(c *client, topic string, payload []byte, qos byte, msgs, window int) error {
	acks := make(chan error, 1)
	want := msgs
	if qos == 0 {
		want = 1
	}
	sem := make(chan struct{}, window)
	go func() {
		var hdr [4]byte
		for i := 0; i < want; i++ {
			if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
				acks <- err
				return
			}
			if hdr[0] != 0x40 {
				acks <- fmt.Errorf("expected PUBACK, got % x", hdr)
				return
			}
			if qos == 1 {
				<-sem
			}
		}
		acks <- nil
	}()
	w := bufio.NewWriterSize(c.c, 16<<10)
	for i := 0; i < msgs; i++ {
		if qos == 1 {
			sem <- struct{}{}
			if _, err := w.Write(publishPacket(topic, payload, 1, uint16(i%65000+1))); err != nil {
				return err
			}
			if len(sem) == cap(sem) || i == msgs-1 {
				if err := w.Flush(); err != nil {
					return err
				}
			}
			continue
		}
		if _, err := w.Write(publishPacket(topic, payload, 0, 0)); err != nil {
			return err
		}
	}
	if qos == 0 {
		if _, err := w.Write(publishPacket(topic, payload, 1, 1)); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	select {
	case err := <-acks:
		return err
	case <-time.After(5 * time.Minute):
		return errors.New("timed out waiting for PUBACKs")
	}
}

// gencerts writes a benchmark PKI: a tenant root and issuing CA, a server
// CA and certificate for localhost, and n device certificates (ECDSA P-256,
// clientAuth, URI SAN urn:ward:bench:device:<id>, CN = <id>).
func gencerts(dir string, n int) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Fatal(err)
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			log.Fatal(err)
		}
		return k
	}
	serial := int64(1)
	create := func(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(30 * 24 * time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			log.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	ca := func(name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		k := newKey()
		if parentKey == nil {
			parentKey = k
		}
		c := create(&x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, parent, &k.PublicKey, parentKey)
		return c, k
	}
	pemCert := func(c *x509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	pemKey := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			log.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	write := func(name string, data ...[]byte) {
		var all []byte
		for _, d := range data {
			all = append(all, d...)
		}
		if err := os.WriteFile(filepath.Join(dir, name), all, 0o600); err != nil {
			log.Fatal(err)
		}
	}
	root, rootKey := ca("bench root", nil, nil)
	issuing, issuingKey := ca("bench issuing", root, rootKey)
	srvCA, srvCAKey := ca("bench server CA", nil, nil)
	sk := newKey()
	srv := create(&x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, srvCA, &sk.PublicKey, srvCAKey)
	write("server.pem", pemCert(srv))
	write("server.key", pemKey(sk))
	write("server-ca.pem", pemCert(srvCA))
	write("issuing.pem", pemCert(issuing))
	write("client-cas.pem", pemCert(issuing), pemCert(root))
	f, err := os.Create(filepath.Join(dir, "devices.pem"))
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("dev-%05d", i)
		k := newKey()
		u, _ := url.Parse("urn:ward:bench:device:" + id)
		c := create(&x509.Certificate{Subject: pkix.Name{CommonName: id}, URIs: []*url.URL{u},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
			issuing, &k.PublicKey, issuingKey)
		w.Write(pemCert(c))
		w.Write(pemKey(k))
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	f.Close()
	fmt.Printf("wrote %d device certificates to %s\n", n, dir)
}
