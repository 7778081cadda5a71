package ota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/internal/ota/delta"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

const (
	// MaxDeltaBases bounds how many earlier releases of a hardware model
	// get a delta to a new release: each costs a zstd pass over the image
	// at publish time. Devices further behind download the full image.
	MaxDeltaBases = 16

	// maxSideFileSize bounds an SBOM or reference-values document.
	maxSideFileSize = 16 << 20
)

// ErrReleaseExists is returned when publishing a release twice.
var ErrReleaseExists = errors.New("ota: release already published for this hardware model")

// Release is a firmware release to publish.
type Release struct {
	Name, Version   string
	HardwareID      string
	SecurityVersion uint64
	Image           io.Reader
	// SBOM (CycloneDX JSON) and RefValues (golden measurements for
	// attestation) are optional; both become their own targets and are
	// named, with their hashes, in the signed manifest.
	SBOM, RefValues []byte
}

// ID returns "<name>@<version>" (wire.OTACustomRelease).
func (r Release) ID() string { return r.Name + "@" + r.Version }

// Published describes what [Image.Publish] staged.
type Published struct {
	Release        string
	ReleaseCounter uint64
	Image          string // target paths
	Manifest       string
	SBOM           string // "" when none
	RefValues      string
	Deltas         []string
	// Pending is the unsigned targets metadata still to be signed offline
	// (tufrepo.Sign) and imported ([Image.Commit]); nil when the server
	// holds the targets keys and the release is already served.
	Pending []byte
}

// ImageConfig configures an [Image] repository.
type ImageConfig struct {
	Repo  *tufrepo.Repo
	Blobs Blobs
	// ManifestSigner signs release manifests, so the manifest (release,
	// hashes of image, SBOM and reference values) can be checked outside
	// TUF, e.g. by the attestation verifier. Required.
	ManifestSigner tufrepo.Signer
	Now            func() time.Time
}

// Image is the image repository: every release of every hardware model.
type Image struct{ cfg ImageConfig }

// NewImage returns the image repository.
func NewImage(cfg ImageConfig) (*Image, error) {
	if cfg.Repo == nil || cfg.Blobs == nil || cfg.ManifestSigner == nil {
		return nil, errors.New("ota: image repository needs a repo, blobs and a manifest signer")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Image{cfg: cfg}, nil
}

// Repo returns the underlying TUF repository.
func (im *Image) Repo() *tufrepo.Repo { return im.cfg.Repo }

func targetPath(kind, hw, release, ext string) string {
	return kind + "/" + hw + "/" + release + ext
}

// Publish stores a release's files and stages targets metadata naming the
// image, its manifest, SBOM, reference values and deltas from up to
// [MaxDeltaBases] earlier releases of the same hardware model. The release
// counter is one above the highest of that model.
func (im *Image) Publish(ctx context.Context, rel Release) (*Published, error) {
	for what, s := range map[string]string{"release name": rel.Name, "version": rel.Version, "hardware ID": rel.HardwareID} {
		if err := validName(what, s); err != nil {
			return nil, err
		}
	}
	if rel.Image == nil {
		return nil, errors.New("ota: release has no image")
	}
	if len(rel.SBOM) > maxSideFileSize || len(rel.RefValues) > maxSideFileSize {
		return nil, errors.New("ota: SBOM or reference values too large")
	}
	latest, err := im.cfg.Repo.LatestTargets(ctx)
	if err != nil && !errors.Is(err, tufrepo.ErrNotFound) {
		return nil, err
	}
	var counter uint64
	var bases []baseRelease
	if latest != nil {
		for path, tf := range latest.Targets {
			c, err := customOf(tf)
			if err != nil || c.HardwareID != rel.HardwareID || c.Kind != KindImage {
				continue
			}
			if c.Release == rel.ID() {
				return nil, ErrReleaseExists
			}
			counter = max(counter, c.ReleaseCounter)
			if sum := tf.Hashes["sha256"]; sum != nil && tf.Length <= delta.MaxBaseSize {
				bases = append(bases, baseRelease{path: path, counter: c.ReleaseCounter, sha: hex.EncodeToString(sum)})
			}
		}
	}
	counter++
	sort.Slice(bases, func(i, j int) bool { return bases[i].counter > bases[j].counter })
	if len(bases) > MaxDeltaBases {
		bases = bases[:MaxDeltaBases]
	}

	id := rel.ID()
	base := Custom{HardwareID: rel.HardwareID, ReleaseCounter: counter, SecurityVersion: rel.SecurityVersion, Release: id}
	out := &Published{Release: id, ReleaseCounter: counter}
	add := map[string]*metadata.TargetFiles{}

	imgSum, imgLen, err := im.cfg.Blobs.Put(ctx, rel.Image)
	if err != nil {
		return nil, fmt.Errorf("ota: store image: %w", err)
	}
	out.Image = targetPath("images", rel.HardwareID, id, ".img")
	add[out.Image] = target(imgSum, imgLen, base, KindImage)

	m := Manifest{
		Release: id, HardwareID: rel.HardwareID, ReleaseCounter: counter,
		SecurityVersion: rel.SecurityVersion, Created: im.cfg.Now().UTC().Truncate(time.Second),
		Image: FileRef{Path: out.Image, Length: imgLen, SHA256: imgSum},
	}
	side := func(kind string, data []byte, ext string) (string, *FileRef, error) {
		if data == nil {
			return "", nil, nil
		}
		sum, n, err := im.cfg.Blobs.Put(ctx, bytes.NewReader(data))
		if err != nil {
			return "", nil, err
		}
		p := targetPath(kind, rel.HardwareID, id, ext)
		add[p] = target(sum, n, base, kind)
		return p, &FileRef{Path: p, Length: n, SHA256: sum}, nil
	}
	if out.SBOM, m.SBOM, err = side(KindSBOM, rel.SBOM, ".cdx.json"); err != nil {
		return nil, err
	}
	if out.RefValues, m.RefValues, err = side(KindRefValues, rel.RefValues, ".json"); err != nil {
		return nil, err
	}
	mb, err := SignManifest(m, im.cfg.ManifestSigner)
	if err != nil {
		return nil, err
	}
	if out.Manifest, _, err = side(KindManifest, mb, ".json"); err != nil {
		return nil, err
	}

	if len(bases) > 0 && imgLen <= delta.MaxBaseSize {
		newImg, err := readBlob(ctx, im.cfg.Blobs, imgSum, imgLen)
		if err != nil {
			return nil, err
		}
		for _, b := range bases {
			old, err := readBlob(ctx, im.cfg.Blobs, b.sha, delta.MaxBaseSize)
			if err != nil {
				return nil, fmt.Errorf("ota: read base %s: %w", b.path, err)
			}
			var patch bytes.Buffer
			if err := delta.Make(&patch, old, newImg); err != nil {
				return nil, err
			}
			if int64(patch.Len()) >= imgLen {
				continue // no gain: devices take the full image
			}
			sum, n, err := im.cfg.Blobs.Put(ctx, &patch)
			if err != nil {
				return nil, err
			}
			from := strings.TrimSuffix(b.path[strings.LastIndexByte(b.path, '/')+1:], ".img")
			p := targetPath("deltas", rel.HardwareID, id, ".from-"+from+".zst")
			c := base
			c.DeltaFrom, c.DeltaTarget = b.path, out.Image
			add[p] = target(sum, n, c, KindDelta)
			out.Deltas = append(out.Deltas, p)
		}
	}

	pending, err := im.cfg.Repo.StageTargets(ctx, func(t *metadata.TargetsType) error {
		for p, tf := range add {
			if _, ok := t.Targets[p]; ok {
				return ErrReleaseExists
			}
			tf.Path = p
			t.Targets[p] = tf
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out.Pending = pending
	return out, nil
}

type baseRelease struct {
	path    string
	counter uint64
	sha     string
}

func target(sum string, n int64, c Custom, kind string) *metadata.TargetFiles {
	h, _ := hex.DecodeString(sum) // sum came from our own hasher
	c.Kind = kind
	return &metadata.TargetFiles{Length: n, Hashes: metadata.Hashes{"sha256": h}, Custom: c.raw()}
}

func customOf(tf *metadata.TargetFiles) (Custom, error) {
	if tf == nil || tf.Custom == nil {
		return Custom{}, errors.New("ota: target has no custom metadata")
	}
	return ParseCustom(*tf.Custom)
}

// Commit imports targets metadata signed offline (see [Published.Pending]
// and tufrepo.Sign). It is refused unless the signatures meet the targets
// threshold and every target's file is stored with Ward custom metadata.
func (im *Image) Commit(ctx context.Context, signed []byte) error {
	return im.cfg.Repo.CommitTargets(ctx, signed, func(t *metadata.TargetsType) error {
		for p, tf := range t.Targets {
			if _, err := customOf(tf); err != nil {
				return fmt.Errorf("ota: target %s: %w", p, err)
			}
			sum := tf.Hashes["sha256"]
			if len(sum) != sha256.Size {
				return fmt.Errorf("ota: target %s has no sha256", p)
			}
			f, err := im.cfg.Blobs.Open(ctx, hex.EncodeToString(sum))
			if err != nil {
				return fmt.Errorf("ota: target %s: %w", p, err)
			}
			f.Close()
		}
		return nil
	})
}

// Target returns a served (committed) target and its custom metadata.
func (im *Image) Target(ctx context.Context, path string) (*metadata.TargetFiles, Custom, error) {
	t, err := im.cfg.Repo.Targets(ctx)
	if err != nil {
		return nil, Custom{}, err
	}
	tf, ok := t.Signed.Targets[path]
	if !ok {
		return nil, Custom{}, fmt.Errorf("ota: no served target %q", path)
	}
	c, err := customOf(tf)
	return tf, c, err
}

// Open returns the content of a served target, for the HTTP handler.
func (im *Image) Open(ctx context.Context, path string) (io.ReadSeekCloser, *metadata.TargetFiles, error) {
	tf, _, err := im.Target(ctx, path)
	if err != nil {
		return nil, nil, ErrBlobNotFound
	}
	f, err := im.cfg.Blobs.Open(ctx, hex.EncodeToString(tf.Hashes["sha256"]))
	return f, tf, err
}
