package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// Offline targets keys (issue #10). `ward release init-offline` makes a
// tenant's Image repository trust only targets keys the server never
// sees: the server writes root version N+1 listing them (signed by the
// root key it holds — the root key itself stays online in this slice, so
// whoever controls the server could rotate the targets keys back; what
// the switch buys is that publishing a release needs the offline keys,
// and devices verify that). Snapshot and timestamp stay online. The
// server's own targets key is no longer listed, so from then on
// tufrepo.StageTargets keeps every release pending until a threshold of
// the offline keys signed it (`ward release sign`, offline) and
// `ward release commit` imported it.

// offlineTargetsKey parses a PEM public key an operator registers as an
// offline targets key. Only key types go-tuf verifies as we sign them
// (tufrepo.NewSigner): Ed25519 and ECDSA P-256.
func offlineTargetsKey(p string) (*metadata.Key, error) {
	blk, rest := pem.Decode([]byte(p))
	if blk == nil || blk.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("each key must be one PEM \"PUBLIC KEY\" block (openssl pkey -pubout)")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	switch pk := k.(type) {
	case ed25519.PublicKey:
	case *ecdsa.PublicKey:
		if pk.Curve != elliptic.P256() {
			return nil, errors.New("ECDSA keys must be on P-256 (TUF ecdsa-sha2-nistp256)")
		}
	default:
		return nil, fmt.Errorf("key type %T unsupported: use Ed25519 or ECDSA P-256", k)
	}
	return metadata.KeyFromPublicKey(k)
}

// InitOfflineTargets rotates the tenant's Image root to one whose targets
// role is the given offline keys.
func (s *Server) InitOfflineTargets(ctx context.Context, actor, tid string, req api.OfflineTargetsRequest) (*api.OfflineTargets, error) {
	var keys []*metadata.Key
	seen := map[string]bool{}
	out := &api.OfflineTargets{Threshold: req.Threshold}
	for _, p := range req.PublicKeysPEM {
		k, err := offlineTargetsKey(p)
		if err != nil {
			return nil, api.Invalid(err)
		}
		id, err := k.ID()
		if err != nil {
			return nil, api.Invalid(err)
		}
		if seen[id] {
			return nil, api.Invalid(fmt.Errorf("key %s given twice: a threshold counts distinct keys", id))
		}
		seen[id] = true
		keys = append(keys, k)
		out.KeyIDs = append(out.KeyIDs, id)
	}
	if req.Threshold < 1 || req.Threshold > len(keys) {
		return nil, api.Invalid(errors.New("threshold must be between 1 and the number of keys"))
	}
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	sealer, err := s.Tenants.Sealer(ctx, tid)
	if err != nil {
		return nil, err
	}
	// The keys tenantOTA created; OnlineKey only reads them now.
	signer := func(name string) (tufrepo.Signer, *metadata.Key, error) {
		sg, err := tufrepo.OnlineKey(ctx, t.meta, sealer, name)
		if err != nil {
			return nil, nil, err
		}
		k, err := tufrepo.PublicKey(sg)
		return sg, k, err
	}
	rootSigner, rootKey, err := signer("image-root")
	if err != nil {
		return nil, err
	}
	_, snapKey, err := signer("image-snapshot")
	if err != nil {
		return nil, err
	}
	_, tsKey, err := signer("image-timestamp")
	if err != nil {
		return nil, err
	}
	repo := t.image.Repo()
	curRaw, err := repo.Root(ctx)
	if err != nil {
		return nil, err
	}
	cur, err := metadata.Root().FromBytes(curRaw)
	if err != nil {
		return nil, err
	}
	raw, err := tufrepo.NewRoot(tufrepo.RootSpec{Version: cur.Signed.Version + 1, Expires: s.now().Add(tufrepo.DefaultExpiry.Root),
		Root: []*metadata.Key{rootKey}, Targets: keys, Snapshot: []*metadata.Key{snapKey}, Timestamp: []*metadata.Key{tsKey},
		RootThreshold: 1, TargetsThreshold: req.Threshold})
	if err != nil {
		return nil, api.Invalid(err)
	}
	if raw, err = tufrepo.Sign(raw, rootSigner); err != nil {
		return nil, err
	}
	if err := repo.ImportRoot(ctx, raw); err != nil {
		return nil, fmt.Errorf("rotate the image root: %w", err)
	}
	out.RootVersion = cur.Signed.Version + 1
	// Served targets were signed by the previous targets keys; devices
	// refuse them under the new root, so stage the same content for the
	// offline keys to sign (a later publish builds on it).
	if _, err := repo.Targets(ctx); err == nil {
		if out.PendingTargets, err = repo.StageTargets(ctx, func(*metadata.TargetsType) error { return nil }); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, tufrepo.ErrNotFound) {
		return nil, err
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.targets_offline", Target: "tenant:" + tid, Tenant: tid,
		Detail: fmt.Sprintf("image root %d: targets keys %s, threshold %d", out.RootVersion, strings.Join(out.KeyIDs, ","), req.Threshold)}); err != nil {
		return nil, err
	}
	return out, nil
}

// PendingTargets returns the unsigned targets awaiting offline signatures.
func (s *Server) PendingTargets(ctx context.Context, tid string) ([]byte, error) {
	if _, err := s.otaMeta(tid).Get(ctx, "image/root.json"); errors.Is(err, tufrepo.ErrNotFound) {
		if _, err := s.store.GetTenant(ctx, tid); err != nil {
			return nil, err
		}
		return nil, noPending()
	}
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	b, err := t.image.Repo().Pending(ctx)
	if errors.Is(err, tufrepo.ErrNotFound) {
		return nil, noPending()
	}
	return b, err
}

func noPending() error {
	return &api.Error{Status: http.StatusNotFound, Title: "Not found", Detail: "no targets metadata awaits signatures"}
}

// CommitTargets imports targets metadata signed offline.
func (s *Server) CommitTargets(ctx context.Context, actor, tid string, signed []byte) (*api.TargetsCommitted, error) {
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	tm, perr := metadata.Targets().FromBytes(signed)
	if perr != nil {
		return nil, api.Invalid(errors.New("the body is not TUF targets metadata"))
	}
	if err := t.image.Commit(ctx, signed); err != nil {
		detail := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "tufrepo: "), "ota: ")
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.targets_commit", Target: "tenant:" + tid, Tenant: tid,
			Result: audit.ResultDenied, Detail: fmt.Sprintf("targets %d: %s", tm.Signed.Version, detail)})
		switch {
		case errors.Is(err, tufrepo.ErrThreshold):
			return nil, &api.Error{Status: http.StatusUnprocessableEntity, Title: "Not enough signatures",
				Detail: "the signatures do not meet the targets threshold of the tenant's registered offline keys (ward release sign with more keys): " + detail}
		case errors.Is(err, tufrepo.ErrVersion):
			return nil, &api.Error{Status: http.StatusConflict, Title: "Conflict", Detail: detail}
		case errors.Is(err, tufrepo.ErrTooLarge):
			return nil, &api.Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: detail}
		}
		return nil, api.Invalid(errors.New(detail))
	}
	images := 0
	for _, tf := range tm.Signed.Targets {
		if tf.Custom == nil {
			continue
		}
		if c, err := ota.ParseCustom(*tf.Custom); err == nil && c.Kind == ota.KindImage {
			images++
		}
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.targets_commit", Target: "tenant:" + tid, Tenant: tid,
		Detail: fmt.Sprintf("targets %d signed offline (%d signatures), %d images served", tm.Signed.Version, len(tm.Signatures), images)}); err != nil {
		return nil, err
	}
	rs, err := s.ListReleases(ctx, tid)
	if err != nil {
		return nil, err
	}
	return &api.TargetsCommitted{Version: tm.Signed.Version, Releases: rs}, nil
}
