package ota

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/wardiot/ward/wire"
)

// Errors a [Source] returns; the engine reports them as a failed job.
var (
	// ErrDisagree means the Director names something the Image
	// repository does not vouch for, or not for this device.
	ErrDisagree = errors.New("ota: repositories disagree")
	// ErrRollback means the update would lower the release counter or
	// the security version below the floor.
	ErrRollback = errors.New("ota: update would roll back")
	// ErrNoUpdate means the Director names nothing to install.
	ErrNoUpdate = errors.New("ota: no update assigned")
	// ErrTooLong means a server sent more bytes than the target's length.
	ErrTooLong = errors.New("ota: download longer than the target")
)

// Plan is what both repositories agreed the device should install.
type Plan struct {
	// Image is the full image, with the Image repository's fields.
	Image Target
	// Delta, if set, reconstructs Image from the installed target.
	Delta *Target
	// MinSecurityVersion is the Director's minimum.
	MinSecurityVersion uint64
}

// Source finds and fetches updates. [Client] is the TUF implementation.
type Source interface {
	// Resolve returns the update assigned to the device running
	// installed, refusing anything below floor.
	Resolve(ctx context.Context, installed Installed, floor uint64) (*Plan, error)
	// Open returns the content of t from byte offset on. The engine
	// limits what it reads to t.Length and checks the hash.
	Open(ctx context.Context, t Target, offset int64) (io.ReadCloser, error)
}

// Limits on what servers send us.
const (
	// maxMetadataRoot etc. are go-tuf's defaults: a root with a handful
	// of keys is a few KiB; targets metadata grows with the number of
	// releases.
	maxRootSize      = 512 << 10
	maxTimestampSize = 16 << 10
	maxSnapshotSize  = 2 << 20
	maxTargetsSize   = 5 << 20
	// maxRootRotations bounds the root versions walked in one refresh.
	maxRootRotations = 256
	// metadataTimeout bounds one metadata request.
	metadataTimeout = 2 * time.Minute
)

// ClientConfig configures a [Client].
type ClientConfig struct {
	// Server is the base URL of the Ward server, "https://host:port".
	Server string
	// DeviceID names the device's Director repository.
	DeviceID string
	// HardwareID is the device's hardware model; targets for any other
	// model are refused.
	HardwareID string
	// ImageRoot and DirectorRoot are the repositories' trusted root.json,
	// received at enrollment. Roots rotated since are found in the cache.
	ImageRoot, DirectorRoot []byte
	// CacheDir holds each repository's trusted metadata (image/ and
	// director/). Wiping it lowers no floor: the release counter and
	// security version are kept by the engine and the [Floor].
	CacheDir string
	// HTTPClient carries the device's mTLS identity (its transport's
	// TLSClientConfig.GetClientCertificate is
	// [github.com/wardiot/ward/agent.Agent.GetClientCertificate]).
	HTTPClient *http.Client
	// Now is the clock metadata expiry is checked against; time.Now if
	// nil.
	Now func() time.Time
}

// Client is the TUF client for the Image and Director repositories. It is
// not safe for concurrent use; the [Engine] runs one job at a time.
//
// go-tuf writes the metadata cache without fsync: after a power cut a
// cached file may be empty, and the client then starts again from the
// enrollment root, which is safe because the floor and the installed
// release counter are kept elsewhere.
type Client struct {
	cfg       ClientConfig
	imageBase string
	dirBase   string
	// consistent records whether the Image repository uses consistent
	// snapshots, from the last refresh, to build target URLs.
	consistent bool
}

var _ Source = (*Client)(nil)

// NewClient checks cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	var problems []string
	if _, err := url.Parse(cfg.Server); err != nil || !strings.HasPrefix(cfg.Server, "http") {
		problems = append(problems, "server must be an https:// URL")
	}
	if err := wire.ValidateDeviceID(cfg.DeviceID); err != nil {
		problems = append(problems, err.Error())
	}
	if cfg.HardwareID == "" {
		problems = append(problems, "hardware ID is required")
	}
	if len(cfg.ImageRoot) == 0 || len(cfg.DirectorRoot) == 0 {
		problems = append(problems, "both trusted roots are required (from enrollment)")
	}
	if cfg.CacheDir == "" {
		problems = append(problems, "cache directory is required")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("ota: client config: %s", strings.Join(problems, "; "))
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	base := strings.TrimSuffix(cfg.Server, "/")
	return &Client{
		cfg:       cfg,
		imageBase: base + wire.OTAImagePath,
		dirBase:   base + wire.OTADirectorPath + url.PathEscape(cfg.DeviceID) + "/",
	}, nil
}

// updater returns a freshly refreshed updater for one repository.
func (c *Client) updater(ctx context.Context, base string, root []byte, cache string) (*updater.Updater, error) {
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return nil, err
	}
	// Prefer the cached root: it may have been rotated since
	// enrollment. A corrupt or missing one (a power cut: go-tuf does
	// not sync) falls back to the enrollment root, from which go-tuf
	// walks the rotations again.
	if b, err := os.ReadFile(filepath.Join(cache, "root.json")); err == nil && len(b) <= maxRootSize {
		if _, err := trustedmetadata.New(b); err == nil {
			root = b
		}
	}
	cfg, err := config.New(base, root)
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir = cache
	cfg.LocalTargetsDir = filepath.Join(cache, "targets")
	cfg.RemoteTargetsURL = base + "targets/"
	cfg.MaxRootRotations = maxRootRotations
	cfg.RootMaxLength, cfg.TimestampMaxLength = maxRootSize, maxTimestampSize
	cfg.SnapshotMaxLength, cfg.TargetsMaxLength = maxSnapshotSize, maxTargetsSize
	cfg.Fetcher = &fetcher{ctx: ctx, client: c.cfg.HTTPClient}
	return newUpdater(cfg, c.cfg.Now())
}

// ErrMetadataPanic means go-tuf panicked on metadata the server sent
// (go-tuf v2.4.2 does on an Ed25519 key of the wrong length in a root):
// the update is refused instead of crashing the agent.
var ErrMetadataPanic = errors.New("ota: TUF metadata made the verifier fail")

// newUpdater builds and refreshes a go-tuf updater, turning a panic inside
// go-tuf (hostile metadata) into an error.
func newUpdater(cfg *config.UpdaterConfig, now time.Time) (u *updater.Updater, err error) {
	defer func() {
		if r := recover(); r != nil {
			u, err = nil, ErrMetadataPanic
		}
	}()
	u, err = updater.New(cfg)
	if err != nil {
		return nil, err
	}
	u.UnsafeSetRefTime(now)
	if err := u.Refresh(); err != nil {
		return nil, err
	}
	return u, nil
}

// Resolve implements [Source]: refresh both repositories, then check
// every Director target against the Image repository.
func (c *Client) Resolve(ctx context.Context, installed Installed, floor uint64) (*Plan, error) {
	img, err := c.updater(ctx, c.imageBase, c.cfg.ImageRoot, filepath.Join(c.cfg.CacheDir, "image"))
	if err != nil {
		return nil, fmt.Errorf("ota: image repository: %w", err)
	}
	dir, err := c.updater(ctx, c.dirBase, c.cfg.DirectorRoot, filepath.Join(c.cfg.CacheDir, "director"))
	if err != nil {
		return nil, fmt.Errorf("ota: director repository: %w", err)
	}
	c.consistent = img.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot
	var plan *Plan
	for name, dtf := range dir.GetTopLevelTargets() {
		it, err := c.agree(img, name, dtf, installed, floor)
		if err != nil {
			return nil, err
		}
		if !it.IsImage() {
			continue
		}
		if plan != nil {
			return nil, fmt.Errorf("%w: director names two images (%s, %s)", ErrDisagree, plan.Image.Name, name)
		}
		plan = &Plan{Image: *it, MinSecurityVersion: it.MinSecurityVersion}
	}
	if plan == nil {
		return nil, ErrNoUpdate
	}
	plan.Delta = findDelta(img.GetTopLevelTargets(), plan.Image, installed, c.cfg.HardwareID)
	return plan, nil
}

// agree checks one Director target against the Image repository and
// returns the Image repository's view of it (with the Director's
// minSecurityVersion).
func (c *Client) agree(img *updater.Updater, name string, dtf *metadata.TargetFiles, installed Installed, floor uint64) (*Target, error) {
	dt, err := targetOf(name, dtf)
	if err != nil {
		return nil, fmt.Errorf("%w: director: %v", ErrDisagree, err)
	}
	itf, err := img.GetTargetInfo(name)
	if err != nil {
		return nil, fmt.Errorf("%w: image repository has no target %q", ErrDisagree, name)
	}
	it, err := targetOf(name, itf)
	if err != nil {
		return nil, fmt.Errorf("%w: image: %v", ErrDisagree, err)
	}
	return it, checkAgreement(dt, it, c.cfg.HardwareID, installed, floor)
}

// checkAgreement is the Uptane check go-tuf's multirepo lacks.
func checkAgreement(dt, it *Target, hardwareID string, installed Installed, floor uint64) error {
	name := dt.Name
	switch {
	case dt.Length != it.Length:
		return fmt.Errorf("%w: %s: length %d (director) vs %d (image)", ErrDisagree, name, dt.Length, it.Length)
	case dt.SHA256 != it.SHA256:
		return fmt.Errorf("%w: %s: sha256 differs", ErrDisagree, name)
	case it.HardwareID != hardwareID:
		return fmt.Errorf("%w: %s is for hardware %q, this device is %q", ErrDisagree, name, it.HardwareID, hardwareID)
	case dt.HardwareID != "" && dt.HardwareID != hardwareID:
		return fmt.Errorf("%w: director assigns %s for hardware %q, this device is %q", ErrDisagree, name, dt.HardwareID, hardwareID)
	case dt.Kind != "" && dt.Kind != it.Kind:
		return fmt.Errorf("%w: %s: kind %q (director) vs %q (image)", ErrDisagree, name, dt.Kind, it.Kind)
	case dt.Release != "" && dt.Release != it.Release:
		return fmt.Errorf("%w: %s: release %q (director) vs %q (image)", ErrDisagree, name, dt.Release, it.Release)
	case dt.ReleaseCounter != 0 && dt.ReleaseCounter != it.ReleaseCounter:
		return fmt.Errorf("%w: %s: release counter %d (director) vs %d (image)", ErrDisagree, name, dt.ReleaseCounter, it.ReleaseCounter)
	case it.ReleaseCounter < installed.ReleaseCounter:
		return fmt.Errorf("%w: %s has release counter %d, the device runs %d", ErrRollback, name, it.ReleaseCounter, installed.ReleaseCounter)
	case it.SecurityVersion < floor:
		return fmt.Errorf("%w: %s has security version %d, the floor is %d", ErrRollback, name, it.SecurityVersion, floor)
	case it.SecurityVersion < dt.MinSecurityVersion:
		return fmt.Errorf("%w: %s has security version %d, the director requires %d", ErrRollback, name, it.SecurityVersion, dt.MinSecurityVersion)
	}
	it.MinSecurityVersion = dt.MinSecurityVersion
	return nil
}

// findDelta picks the smallest delta from the installed target to want.
func findDelta(targets map[string]*metadata.TargetFiles, want Target, installed Installed, hardwareID string) *Target {
	if installed.Target == "" {
		return nil
	}
	var best *Target
	for name, tf := range targets {
		t, err := targetOf(name, tf)
		if err != nil || t.Kind != "delta" || t.DeltaTarget != want.Name || t.DeltaFrom != installed.Target || t.HardwareID != hardwareID {
			continue
		}
		if best == nil || t.Length < best.Length {
			best = t
		}
	}
	return best
}

// Open implements [Source]: GET the target from the Image repository,
// asking for a Range when resuming.
func (c *Client) Open(ctx context.Context, t Target, offset int64) (io.ReadCloser, error) {
	p := t.Name
	if c.consistent {
		dir, base := path.Split(t.Name)
		p = dir + t.SHA256 + "." + base
	}
	u := c.imageBase + "targets/" + escapePath(p)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ota: download %s: %w", t.Name, err)
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		var start int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != offset {
			resp.Body.Close()
			return nil, fmt.Errorf("ota: download %s: server answered a different range", t.Name)
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK:
		// The server ignored the range: skip what we already have.
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("ota: download %s: %w", t.Name, err)
		}
		return resp.Body, nil
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("ota: download %s: server answered %s", t.Name, resp.Status)
	}
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i := range parts {
		parts[i] = url.PathEscape(parts[i])
	}
	return strings.Join(parts, "/")
}

// fetcher is go-tuf's Fetcher over the device's mTLS client, bound to a
// context, without go-tuf's retry loop (the engine retries jobs).
type fetcher struct {
	ctx    context.Context
	client *http.Client
}

func (f *fetcher) DownloadFile(u string, maxLength int64, _ time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(f.ctx, metadataTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: resp.StatusCode, URL: u}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLength+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is longer than %d bytes", u, maxLength)}
	}
	return b, nil
}
