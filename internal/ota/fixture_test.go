package ota

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// testSealer is AES-GCM with a random key, standing in for tenant.Sealer.
type testSealer struct{ a cipher.AEAD }

func newTestSealer(t testing.TB) *testSealer {
	k := make([]byte, 32)
	rand.Read(k)
	b, _ := aes.NewCipher(k)
	a, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return &testSealer{a}
}

func (s *testSealer) Seal(p, aad []byte) ([]byte, error) {
	n := make([]byte, s.a.NonceSize())
	rand.Read(n)
	return s.a.Seal(n, n, p, aad), nil
}

func (s *testSealer) Open(c, aad []byte) ([]byte, error) {
	if len(c) < s.a.NonceSize() {
		return nil, errors.New("short")
	}
	return s.a.Open(nil, c[:s.a.NonceSize()], c[s.a.NonceSize():], aad)
}

// snapStore is a Store whose whole state can be saved and restored, to
// play a server rolled back to older metadata.
type snapStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *snapStore) Get(_ context.Context, n string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[n]
	if !ok {
		return nil, tufrepo.ErrNotFound
	}
	return b, nil
}

func (s *snapStore) Put(_ context.Context, n string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[n] = append([]byte(nil), b...)
	return nil
}

func (s *snapStore) save() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.m)
}

func (s *snapStore) restore(m map[string][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = maps.Clone(m)
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type testDevices map[string]string

func (d testDevices) HardwareID(_ context.Context, id string) (string, error) {
	hw, ok := d[id]
	if !ok {
		return "", errors.New("unknown device")
	}
	return hw, nil
}

func (d testDevices) MinSecurityVersion(context.Context, string) (uint64, error) { return 1, nil }

type eventLog struct {
	mu sync.Mutex
	ev []Event
}

func (l *eventLog) Emit(_ context.Context, e Event) {
	l.mu.Lock()
	l.ev = append(l.ev, e)
	l.mu.Unlock()
}

// headerAuth stands in for the server's mTLS identity in these tests.
type headerAuth struct{}

func (headerAuth) Device(r *http.Request) (string, error) {
	d := r.Header.Get("X-Test-Device")
	if d == "" {
		return "", errors.New("no identity")
	}
	return d, nil
}

type fixture struct {
	t           *testing.T
	clock       *testClock
	store       *snapStore
	image       *Image
	director    *Director
	floors      *MemFloors
	events      *eventLog
	rootKeys    []tufrepo.Signer
	targetsKeys []tufrepo.Signer
	manifestKey tufrepo.Signer
	srv         *httptest.Server
}

func keys(t testing.TB, n int) []tufrepo.Signer {
	var out []tufrepo.Signer
	for range n {
		s, _, err := tufrepo.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func pub(t testing.TB, ss ...tufrepo.Signer) []*metadata.Key {
	var out []*metadata.Key
	for _, s := range ss {
		k, err := tufrepo.PublicKey(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

// newFixture builds an image repository with offline root and targets
// keys (threshold 2 each) and online snapshot/timestamp keys sealed in the
// store, a Director, and an HTTP server for both.
func newFixture(t *testing.T) *fixture { return newFixtureWith(t, keys(t, 2)) }

// newFixtureWith uses the given offline targets keys (threshold: all).
func newFixtureWith(t *testing.T, targets []tufrepo.Signer) *fixture {
	ctx := context.Background()
	f := &fixture{
		t: t, clock: &testClock{t: time.Now().UTC().Truncate(time.Second)},
		store: &snapStore{m: map[string][]byte{}}, floors: &MemFloors{}, events: &eventLog{},
		rootKeys: keys(t, 2), targetsKeys: targets, manifestKey: keys(t, 1)[0],
	}
	sealer := newTestSealer(t)
	snap, err := tufrepo.OnlineKey(ctx, f.store, sealer, "image-snapshot")
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tufrepo.OnlineKey(ctx, f.store, sealer, "image-timestamp")
	if err != nil {
		t.Fatal(err)
	}
	repo := tufrepo.New(tufrepo.Config{Store: f.store, Prefix: "image", Now: f.clock.Now, Snapshot: snap, Timestamp: ts})
	root, err := tufrepo.NewRoot(tufrepo.RootSpec{
		Expires: f.clock.Now().Add(365 * 24 * time.Hour),
		Root:    pub(t, f.rootKeys...), Targets: pub(t, f.targetsKeys...),
		Snapshot: pub(t, snap), Timestamp: pub(t, ts), RootThreshold: 2, TargetsThreshold: len(targets),
	})
	if err != nil {
		t.Fatal(err)
	}
	if root, err = tufrepo.Sign(root, f.rootKeys...); err != nil {
		t.Fatal(err)
	}
	if err := repo.ImportRoot(ctx, root); err != nil {
		t.Fatal(err)
	}
	f.image, err = NewImage(ImageConfig{Repo: repo, Blobs: DirBlobs{Dir: t.TempDir()}, ManifestSigner: f.manifestKey, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.director, err = NewDirector(ctx, DirectorConfig{
		Store: f.store, Sealer: sealer, Image: f.image, Floors: f.floors,
		Devices: testDevices{"dev-1": "board-a", "dev-2": "board-a", "dev-b": "board-b"},
		Events:  f.events, Now: f.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(&Handler{Image: f.image, Director: f.director, Auth: headerAuth{}})
	t.Cleanup(f.srv.Close)
	return f
}

// publish publishes a release and signs it offline with the given
// targets keys, like `ward release sign` would.
func (f *fixture) publish(name, version, hw string, sv uint64, img []byte, signers ...tufrepo.Signer) (*Published, error) {
	ctx := context.Background()
	p, err := f.image.Publish(ctx, Release{
		Name: name, Version: version, HardwareID: hw, SecurityVersion: sv, Image: bytes.NewReader(img),
		SBOM: []byte(`{"bomFormat":"CycloneDX","specVersion":"1.5"}`), RefValues: []byte(`{"pcr":{}}`),
	})
	if err != nil {
		return nil, err
	}
	if p.Pending == nil {
		f.t.Fatal("offline targets keys, yet Publish committed")
	}
	signed, err := tufrepo.Sign(p.Pending, signers...)
	if err != nil {
		return nil, err
	}
	return p, f.image.Commit(ctx, signed)
}

type deviceTransport struct{ device string }

func (d deviceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Device", d.device)
	return http.DefaultTransport.RoundTrip(r)
}

// client returns a go-tuf updater for a repository base URL, trusting
// root and caching in dir, with reference time at the fixture's clock.
func (f *fixture) client(device, base string, root []byte, dir string) (*updater.Updater, error) {
	cfg, err := config.New(f.srv.URL+base, root)
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir = dir
	cfg.LocalTargetsDir = dir + "/targets"
	// Not SetDefaultFetcherTransport: go-tuf's would set the transport on
	// http.DefaultClient, for the whole process.
	if err := cfg.SetDefaultFetcherHTTPClient(&http.Client{Transport: deviceTransport{device}}); err != nil {
		return nil, err
	}
	if err := cfg.SetDefaultFetcherRetry(time.Millisecond, 1); err != nil {
		return nil, err
	}
	u, err := updater.New(cfg)
	if err != nil {
		return nil, err
	}
	u.UnsafeSetRefTime(f.clock.Now())
	return u, nil
}

func (f *fixture) imageRoot1() []byte {
	b, err := f.image.Repo().File(context.Background(), "1.root.json")
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// testImage returns n seeded pseudo-random bytes.
func testImage(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// mutate changes about one byte in 200 of img, deterministically.
func mutate(img []byte, seed int64) []byte {
	out := append([]byte(nil), img...)
	for i := int(seed % 200); i < len(out); i += 200 {
		out[i] ^= 0x5a
	}
	return out
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
