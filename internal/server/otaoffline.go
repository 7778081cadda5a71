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
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// Offline Image keys (issue #10). A tenant's Image repository starts in
// development mode: the server holds every key. `ward release
// init-offline` moves the root role, the targets role or both to keys
// the server never sees: the server makes root version N+1 listing them.
// While the server still holds the current root key it signs that root
// with it; if the new root also meets its own threshold that way (only
// the targets keys changed, the root key stayed) it is imported at once.
// Otherwise it is staged: officers sign it offline (`ward release sign`,
// with the current root keys and the new ones) and `ward release commit`
// imports it once both thresholds are met. After any import the server
// destroys its own root and targets keys the new root no longer lists, so
// from then on neither a root rotation nor a release can be made without
// the offline keys, and devices verify that. Snapshot and timestamp stay
// online. With offline targets keys, tufrepo.StageTargets keeps every
// release pending until a threshold of them signed it (`ward release
// sign`) and `ward release commit` imported it.

// Server-held Image keys of the offline-capable roles.
const (
	imageRootKey    = "image-root"
	imageTargetsKey = "image-targets"
)

// offlineKey parses a PEM public key an operator registers as an offline
// root or targets key. Only key types go-tuf verifies as we sign them
// (tufrepo.NewSigner): Ed25519 and ECDSA P-256.
func offlineKey(p string) (*metadata.Key, error) {
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

// offlineKeys parses a role's keys, refusing duplicates.
func offlineKeys(role string, pems []string, threshold int) ([]*metadata.Key, error) {
	var keys []*metadata.Key
	seen := map[string]bool{}
	for _, p := range pems {
		k, err := offlineKey(p)
		if err != nil {
			return nil, api.Invalid(fmt.Errorf("%s key: %w", role, err))
		}
		id, err := k.ID()
		if err != nil {
			return nil, api.Invalid(err)
		}
		if seen[id] {
			return nil, api.Invalid(fmt.Errorf("%s key %s given twice: a threshold counts distinct keys", role, id))
		}
		seen[id] = true
		keys = append(keys, k)
	}
	if threshold < 1 || threshold > len(keys) {
		return nil, api.Invalid(fmt.Errorf("the %s threshold must be between 1 and the number of %s keys", role, role))
	}
	return keys, nil
}

// heldImageKey returns the server's own key called name, or nil once it
// was destroyed.
func (s *Server) heldImageKey(ctx context.Context, t *tenantOTA, tid, name string) (tufrepo.Signer, error) {
	sealer, err := s.Tenants.Sealer(ctx, tid)
	if err != nil {
		return nil, err
	}
	k, err := tufrepo.LoadOnlineKey(ctx, t.meta, sealer, name)
	if errors.Is(err, tufrepo.ErrNotFound) {
		return nil, nil
	}
	return k, err
}

// lists reports whether root's role lists the key of signer.
func lists(root *metadata.RootType, role string, signer tufrepo.Signer) bool {
	if signer == nil || root.Roles[role] == nil {
		return false
	}
	id, err := tufrepo.KeyID(signer)
	return err == nil && slices.Contains(root.Roles[role].KeyIDs, id)
}

// ChangeImageKeys implements api.OTA.
func (s *Server) ChangeImageKeys(ctx context.Context, actor, tid string, req api.ImageKeysRequest) (*api.ImageKeys, error) {
	var rootKeys, targetsKeys []*metadata.Key
	var err error
	if len(req.RootKeysPEM) > 0 {
		if rootKeys, err = offlineKeys("root", req.RootKeysPEM, req.RootThreshold); err != nil {
			return nil, err
		}
	}
	if len(req.TargetsKeysPEM) > 0 {
		if targetsKeys, err = offlineKeys("targets", req.TargetsKeysPEM, req.TargetsThreshold); err != nil {
			return nil, err
		}
	}
	return s.nextImageRoot(ctx, actor, tid, func(spec *tufrepo.RootSpec) error {
		if rootKeys != nil {
			spec.Root, spec.RootThreshold = rootKeys, req.RootThreshold
		}
		if targetsKeys != nil {
			spec.Targets, spec.TargetsThreshold = targetsKeys, req.TargetsThreshold
		}
		return nil
	})
}

// RenewImageRoot implements api.OTA.
func (s *Server) RenewImageRoot(ctx context.Context, actor, tid string) (*api.ImageKeys, error) {
	return s.nextImageRoot(ctx, actor, tid, nil)
}

// nextImageRoot makes the root after the current one with edit applied,
// signs it with the server's root key if the current root lists it, and
// imports it if that meets both root thresholds; otherwise it is staged
// for offline signatures.
func (s *Server) nextImageRoot(ctx context.Context, actor, tid string, edit func(*tufrepo.RootSpec) error) (*api.ImageKeys, error) {
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	repo := t.image.Repo()
	cur, err := currentRoot(ctx, repo)
	if err != nil {
		return nil, err
	}
	raw, err := repo.NextRoot(ctx, edit)
	if err != nil {
		return nil, api.Invalid(err)
	}
	rootKey, err := s.heldImageKey(ctx, t, tid, imageRootKey)
	if err != nil {
		return nil, err
	}
	if lists(&cur.Signed, metadata.ROOT, rootKey) {
		if raw, err = tufrepo.Sign(raw, rootKey); err != nil {
			return nil, err
		}
	}
	next, err := metadata.Root().FromBytes(raw)
	if err != nil {
		return nil, err
	}
	if cur.VerifyDelegate(metadata.ROOT, next) == nil && next.VerifyDelegate(metadata.ROOT, next) == nil {
		if err := repo.ImportRoot(ctx, raw); err != nil {
			return nil, fmt.Errorf("rotate the image root: %w", err)
		}
		pending, err := s.afterImageRoot(ctx, actor, tid, t, cur, next)
		if err != nil {
			return nil, err
		}
		out, err := s.ImageKeys(ctx, tid)
		if err != nil {
			return nil, err
		}
		out.PendingTargets = pending
		return out, nil
	}
	if err := repo.StageRoot(ctx, raw); err != nil {
		return nil, api.Invalid(err)
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.root_staged", Target: "tenant:" + tid, Tenant: tid,
		Detail: fmt.Sprintf("image root %d awaits offline signatures: %s", next.Signed.Version, describeRoot(&next.Signed))}); err != nil {
		return nil, err
	}
	return s.ImageKeys(ctx, tid)
}

func currentRoot(ctx context.Context, repo *tufrepo.Repo) (*metadata.Metadata[metadata.RootType], error) {
	b, err := repo.Root(ctx)
	if err != nil {
		return nil, err
	}
	return metadata.Root().FromBytes(b)
}

// describeRoot is a root's root and targets roles for the audit log.
func describeRoot(r *metadata.RootType) string {
	var parts []string
	for _, role := range []string{metadata.ROOT, metadata.TARGETS} {
		if rr := r.Roles[role]; rr != nil {
			parts = append(parts, fmt.Sprintf("%s keys %s threshold %d", role, strings.Join(rr.KeyIDs, ","), rr.Threshold))
		}
	}
	return strings.Join(parts, "; ")
}

// afterImageRoot runs after a new Image root was imported: it destroys
// the server's root and targets keys the new root no longer lists, and,
// when the targets keys changed while releases are served, stages the
// same targets for the new keys to sign (returned; nil if the server
// signed them itself).
func (s *Server) afterImageRoot(ctx context.Context, actor, tid string, t *tenantOTA, prev, next *metadata.Metadata[metadata.RootType]) ([]byte, error) {
	repo := t.image.Repo()
	for _, k := range []struct{ name, role string }{{imageRootKey, metadata.ROOT}, {imageTargetsKey, metadata.TARGETS}} {
		held, err := s.heldImageKey(ctx, t, tid, k.name)
		if err != nil {
			return nil, err
		}
		if held == nil || lists(&next.Signed, k.role, held) {
			continue
		}
		id, _ := tufrepo.KeyID(held)
		if k.role == metadata.TARGETS {
			repo.SetTargets(nil)
		}
		if err := tufrepo.DestroyOnlineKey(ctx, t.meta, k.name); err != nil {
			return nil, fmt.Errorf("destroy the server's %s key: %w", k.role, err)
		}
		if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.key_destroyed", Target: "tenant:" + tid, Tenant: tid,
			Detail: fmt.Sprintf("the server's image %s key %s: not listed by image root %d", k.role, id, next.Signed.Version)}); err != nil {
			return nil, err
		}
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.root", Target: "tenant:" + tid, Tenant: tid,
		Detail: fmt.Sprintf("image root %d: %s", next.Signed.Version, describeRoot(&next.Signed))}); err != nil {
		return nil, err
	}
	pr, nr := prev.Signed.Roles[metadata.TARGETS], next.Signed.Roles[metadata.TARGETS]
	if pr.Threshold == nr.Threshold && slices.Equal(slices.Sorted(slices.Values(pr.KeyIDs)), slices.Sorted(slices.Values(nr.KeyIDs))) {
		return nil, nil
	}
	// Served targets were signed by the previous targets keys; devices
	// refuse them under the new root, so stage the same content for the
	// new keys to sign (a later publish builds on it).
	if _, err := repo.Targets(ctx); errors.Is(err, tufrepo.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return repo.StageTargets(ctx, func(*metadata.TargetsType) error { return nil })
}

// ImageKeys implements api.OTA.
func (s *Server) ImageKeys(ctx context.Context, tid string) (*api.ImageKeys, error) {
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	repo := t.image.Repo()
	cur, err := currentRoot(ctx, repo)
	if err != nil {
		return nil, err
	}
	held := map[string]tufrepo.Signer{}
	for _, n := range []string{imageRootKey, imageTargetsKey} {
		if held[n], err = s.heldImageKey(ctx, t, tid, n); err != nil {
			return nil, err
		}
	}
	out := &api.ImageKeys{RootVersion: cur.Signed.Version, RootExpires: cur.Signed.Expires, Roles: imageRoles(&cur.Signed, held)}
	if b, err := repo.PendingRoot(ctx); err == nil {
		p, err := metadata.Root().FromBytes(b)
		if err != nil {
			return nil, err
		}
		out.PendingRoot, out.PendingRootRoles = b, imageRoles(&p.Signed, held)
	} else if !errors.Is(err, tufrepo.ErrNotFound) {
		return nil, err
	}
	return out, nil
}

// imageRoles lists a root's roles; a role is online when the server
// holds a key it lists and its threshold is 1 (snapshot and timestamp
// always are: tufrepo refuses a root where they are not).
func imageRoles(r *metadata.RootType, held map[string]tufrepo.Signer) []api.ImageRole {
	var out []api.ImageRole
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		rr := r.Roles[role]
		if rr == nil {
			continue
		}
		online := true
		switch role {
		case metadata.ROOT:
			online = rr.Threshold == 1 && lists(r, role, held[imageRootKey])
		case metadata.TARGETS:
			online = rr.Threshold == 1 && lists(r, role, held[imageTargetsKey])
		}
		out = append(out, api.ImageRole{Role: role, KeyIDs: rr.KeyIDs, Threshold: rr.Threshold, Online: online})
	}
	return out
}

// PendingRoot implements api.OTA.
func (s *Server) PendingRoot(ctx context.Context, tid string) ([]byte, error) {
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	b, err := t.image.Repo().PendingRoot(ctx)
	if errors.Is(err, tufrepo.ErrNotFound) {
		return nil, &api.Error{Status: http.StatusNotFound, Title: "Not found", Detail: "no image root awaits signatures"}
	}
	return b, err
}

// CommitRoot implements api.OTA.
func (s *Server) CommitRoot(ctx context.Context, actor, tid string, signed []byte) (*api.ImageKeys, error) {
	t, err := s.tenantOTA(ctx, tid)
	if err != nil {
		return nil, err
	}
	repo := t.image.Repo()
	next, perr := metadata.Root().FromBytes(signed)
	if perr != nil {
		return nil, api.Invalid(errors.New("the body is not TUF root metadata"))
	}
	cur, err := currentRoot(ctx, repo)
	if err != nil {
		return nil, err
	}
	if err := repo.CommitRoot(ctx, signed); err != nil {
		detail := strings.TrimPrefix(err.Error(), "tufrepo: ")
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.root_commit", Target: "tenant:" + tid, Tenant: tid,
			Result: audit.ResultDenied, Detail: fmt.Sprintf("root %d: %s", next.Signed.Version, detail)})
		switch {
		case errors.Is(err, tufrepo.ErrThreshold):
			return nil, &api.Error{Status: http.StatusUnprocessableEntity, Title: "Not enough signatures",
				Detail: "a new root must be signed by a threshold of the current root keys and of its own (ward release sign with more keys): " + detail}
		case errors.Is(err, tufrepo.ErrRootMismatch):
			return nil, &api.Error{Status: http.StatusUnprocessableEntity, Title: "Not the staged root",
				Detail: "the signed root differs from the one staged (ward release pending --root): " + detail}
		case errors.Is(err, tufrepo.ErrNoPendingRoot), errors.Is(err, tufrepo.ErrVersion):
			return nil, &api.Error{Status: http.StatusConflict, Title: "Conflict", Detail: detail}
		case errors.Is(err, tufrepo.ErrTooLarge):
			return nil, &api.Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: detail}
		}
		return nil, api.Invalid(errors.New(detail))
	}
	pending, err := s.afterImageRoot(ctx, actor, tid, t, cur, next)
	if err != nil {
		return nil, err
	}
	out, err := s.ImageKeys(ctx, tid)
	if err != nil {
		return nil, err
	}
	out.PendingTargets = pending
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
