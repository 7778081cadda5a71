package ota

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/wire"
)

// tufRepo is a TUF repository built with go-tuf's metadata API, with
// consistent snapshots (go-tuf's default), held in memory.
type tufRepo struct {
	t       testing.TB
	keys    map[string]ed25519.PrivateKey
	root    *metadata.Metadata[metadata.RootType]
	targets *metadata.Metadata[metadata.TargetsType]
	snap    *metadata.Metadata[metadata.SnapshotType]
	ts      *metadata.Metadata[metadata.TimestampType]
	expires time.Time

	mu    sync.Mutex
	files map[string][]byte // metadata and targets/<sha>.<name>
}

var roles = []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP}

func newTUFRepo(t testing.TB, now time.Time) *tufRepo {
	t.Helper()
	r := &tufRepo{t: t, keys: map[string]ed25519.PrivateKey{}, files: map[string][]byte{}, expires: now.Add(24 * time.Hour)}
	r.root = metadata.Root(now.Add(365 * 24 * time.Hour))
	for _, role := range roles {
		r.setKey(role)
	}
	r.targets = metadata.Targets(r.expires)
	r.snap = metadata.Snapshot(r.expires)
	r.ts = metadata.Timestamp(r.expires)
	r.signRoot()
	r.publish()
	return r
}

func (r *tufRepo) setKey(role string) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		r.t.Fatal(err)
	}
	if old, ok := r.keys[role]; ok {
		k, _ := metadata.KeyFromPublicKey(old.Public())
		id, _ := k.ID()
		if err := r.root.Signed.RevokeKey(id, role); err != nil {
			r.t.Fatal(err)
		}
	}
	k, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.root.Signed.AddKey(k, role); err != nil {
		r.t.Fatal(err)
	}
	r.keys[role] = priv
}

func (r *tufRepo) signer(role string) signature.Signer {
	s, err := signature.LoadSigner(r.keys[role], crypto.Hash(0))
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// signRoot signs the root with its key(s) and stores N.root.json.
func (r *tufRepo) signRoot(extra ...ed25519.PrivateKey) {
	r.root.ClearSignatures()
	for _, k := range append([]ed25519.PrivateKey{r.keys[metadata.ROOT]}, extra...) {
		s, _ := signature.LoadSigner(k, crypto.Hash(0))
		if _, err := r.root.Sign(s); err != nil {
			r.t.Fatal(err)
		}
	}
	b, err := r.root.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.put(fmt.Sprintf("%d.root.json", r.root.Signed.Version), b)
}

// rotateRoot replaces the root key: the new root is signed by the old
// and the new key, as TUF requires.
func (r *tufRepo) rotateRoot() {
	old := r.keys[metadata.ROOT]
	r.setKey(metadata.ROOT)
	r.root.Signed.Version++
	r.signRoot(old)
}

func (r *tufRepo) put(name string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files[name] = b
}

func (r *tufRepo) get(name string) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.files[name]
	return b, ok
}

// rootJSON is version 1 of the root: what a device receives at enrollment.
func (r *tufRepo) rootJSON() []byte {
	b, _ := r.get("1.root.json")
	return b
}

// addTarget adds a target with Ward's custom fields; publish makes it
// visible.
func (r *tufRepo) addTarget(name string, data []byte, custom map[string]any) {
	tf, err := metadata.TargetFile().FromBytes(name, data, "sha256")
	if err != nil {
		r.t.Fatal(err)
	}
	if custom != nil {
		raw, _ := json.Marshal(custom)
		rm := json.RawMessage(raw)
		tf.Custom = &rm
	}
	r.targets.Signed.Targets[name] = tf
	sum := sha256.Sum256(data)
	r.put("targets/"+hex.EncodeToString(sum[:])+"."+name, data)
}

// publish signs new targets, snapshot and timestamp versions.
func (r *tufRepo) publish() {
	r.targets.Signed.Version++
	r.targets.Signed.Expires = r.expires
	r.targets.ClearSignatures()
	if _, err := r.targets.Sign(r.signer(metadata.TARGETS)); err != nil {
		r.t.Fatal(err)
	}
	tb, _ := r.targets.ToBytes(false)
	r.put(fmt.Sprintf("%d.targets.json", r.targets.Signed.Version), tb)
	r.snap.Signed.Version++
	r.snap.Signed.Expires = r.expires
	r.snap.Signed.Meta["targets.json"] = metadata.MetaFile(r.targets.Signed.Version)
	r.snap.ClearSignatures()
	if _, err := r.snap.Sign(r.signer(metadata.SNAPSHOT)); err != nil {
		r.t.Fatal(err)
	}
	sb, _ := r.snap.ToBytes(false)
	r.put(fmt.Sprintf("%d.snapshot.json", r.snap.Signed.Version), sb)
	r.publishTimestamp()
}

func (r *tufRepo) publishTimestamp() {
	r.ts.Signed.Version++
	r.ts.Signed.Expires = r.expires
	r.ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.snap.Signed.Version)
	r.ts.ClearSignatures()
	if _, err := r.ts.Sign(r.signer(metadata.TIMESTAMP)); err != nil {
		r.t.Fatal(err)
	}
	b, _ := r.ts.ToBytes(false)
	r.put("timestamp.json", b)
}

// snapshotFiles copies the served files, to replay them later.
func (r *tufRepo) snapshotFiles() map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string][]byte, len(r.files))
	for k, v := range r.files {
		m[k] = v
	}
	return m
}

func (r *tufRepo) restoreFiles(m map[string][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files = m
}

// otaServer serves an Image repository and one device's Director
// repository over mTLS, like the Ward server.
type otaServer struct {
	srv      *httptest.Server
	image    *tufRepo
	director *tufRepo
	device   string

	mu sync.Mutex
	// extra, if set, is appended to every target body (endless data).
	extra []byte
	// noRange makes the server ignore Range headers.
	noRange bool
	// requests counts target requests with a Range header.
	ranged int
	// cut, if > 0, closes target responses after that many bytes.
	cut int
}

func newOTAServer(t testing.TB, now time.Time, device string) *otaServer {
	t.Helper()
	s := &otaServer{image: newTUFRepo(t, now), director: newTUFRepo(t, now), device: device}
	mux := http.NewServeMux()
	mux.HandleFunc(wire.OTAImagePath, func(w http.ResponseWriter, req *http.Request) {
		s.serve(w, req, s.image, strings.TrimPrefix(req.URL.Path, wire.OTAImagePath))
	})
	dirPrefix := wire.OTADirectorPath + device + "/"
	mux.HandleFunc(dirPrefix, func(w http.ResponseWriter, req *http.Request) {
		s.serve(w, req, s.director, strings.TrimPrefix(req.URL.Path, dirPrefix))
	})
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *otaServer) serve(w http.ResponseWriter, req *http.Request, r *tufRepo, name string) {
	if len(req.TLS.PeerCertificates) == 0 {
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	b, ok := r.get(name)
	if !ok {
		http.NotFound(w, req)
		return
	}
	if !strings.HasPrefix(name, "targets/") {
		w.Write(b)
		return
	}
	s.mu.Lock()
	extra, noRange, cut := s.extra, s.noRange, s.cut
	if req.Header.Get("Range") != "" {
		s.ranged++
	}
	s.mu.Unlock()
	if noRange || extra != nil {
		req.Header.Del("Range")
	}
	if extra != nil {
		w.Write(b)
		w.Write(extra)
		return
	}
	if cut > 0 {
		var off int
		if _, err := fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-", &off); err == nil && off < len(b) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, len(b)-1, len(b)))
			w.WriteHeader(http.StatusPartialContent)
			b = b[off:]
		}
		if len(b) > cut {
			w.Write(b[:cut])
			return // short: the client must resume
		}
		w.Write(b)
		return
	}
	http.ServeContent(w, req, name, time.Time{}, strings.NewReader(string(b)))
}

// client returns an mTLS HTTP client with a throwaway client certificate.
func (s *otaServer) httpClient(t testing.TB) *http.Client {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: s.device},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	c := s.srv.Client()
	tr := c.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return &http.Client{Transport: tr}
}

// release publishes an image in the Image repository and returns its
// custom fields.
func (s *otaServer) release(name string, data []byte, hw string, counter, secver uint64) map[string]any {
	c := map[string]any{
		wire.OTACustomHardwareID: hw, wire.OTACustomReleaseCounter: counter,
		wire.OTACustomSecurityVersion: secver, wire.OTACustomRelease: "fw@" + name, wire.OTACustomKind: "image",
	}
	s.image.addTarget(name, data, c)
	s.image.publish()
	return c
}

// assign makes the Director name target for the device, with data and
// fields as the director states them.
func (s *otaServer) assign(name string, data []byte, custom map[string]any) {
	s.director.targets.Signed.Targets = map[string]*metadata.TargetFiles{}
	s.director.addTarget(name, data, custom)
	s.director.publish()
}
