// Package jointoken authenticates devices by one-time enrollment tokens
// minted for a group and bound to one device ID:
// "wardgrp_<id>_<secret>". Only SHA-256 of the secret is stored; a token
// is single-use (the store marks it used with a conditional write, so two
// server nodes cannot both accept it) and expires.
package jointoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/wire"
)

const (
	// DefaultMaxTTL caps token lifetimes when the group sets none: long
	// enough to ship a device, short enough that a forgotten token dies.
	DefaultMaxTTL = 30 * 24 * time.Hour
	// maxTokenLen bounds the work on an untrusted bearer token.
	maxTokenLen = 128
	idBytes     = 8
	secretBytes = 32
)

// Mint makes a token for device in group g, valid for ttl, and returns
// the token string (shown once) and its record.
func Mint(ctx context.Context, s provision.Store, now time.Time, g *provision.Group, device string, ttl time.Duration) (string, *provision.GroupToken, error) {
	if g.Mechanism != provision.MechanismToken || g.Token == nil {
		return "", nil, fmt.Errorf("group %q does not take enrollment tokens", g.Name)
	}
	if err := wire.ValidateDeviceID(device); err != nil {
		return "", nil, err
	}
	maxTTL := g.Token.MaxTTL
	if maxTTL == 0 {
		maxTTL = DefaultMaxTTL
	}
	if ttl <= 0 || ttl > maxTTL {
		return "", nil, fmt.Errorf("token ttl must be between 1s and %v", maxTTL)
	}
	var id [idBytes]byte
	var sec [secretBytes]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", nil, err
	}
	if _, err := rand.Read(sec[:]); err != nil {
		return "", nil, err
	}
	secret := base64.RawURLEncoding.EncodeToString(sec[:])
	sum := sha256.Sum256([]byte(secret))
	t := &provision.GroupToken{ID: hex.EncodeToString(id[:]), Tenant: g.Tenant, Group: g.Name, Device: device,
		Hash: sum[:], CreatedAt: now.UTC(), ExpiresAt: now.Add(ttl).UTC()}
	if err := s.PutGroupToken(ctx, t); err != nil {
		return "", nil, err
	}
	return wire.GroupTokenPrefix + t.ID + "_" + secret, t, nil
}

// Authenticator implements provision.Authenticator for MechanismToken.
type Authenticator struct {
	store provision.Store
	now   func() time.Time
}

var _ provision.Authenticator = (*Authenticator)(nil)

// New returns an authenticator.
func New(s provision.Store, now func() time.Time) *Authenticator {
	return &Authenticator{store: s, now: now}
}

func parse(s string) (id, secret string, ok bool) {
	if len(s) > maxTokenLen {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(s, wire.GroupTokenPrefix)
	if !ok || len(rest) < 2*idBytes+2 || rest[2*idBytes] != '_' {
		return "", "", false
	}
	id, secret = rest[:2*idBytes], rest[2*idBytes+1:]
	if _, err := hex.DecodeString(id); err != nil {
		return "", "", false
	}
	return id, secret, true
}

// Authenticate implements provision.Authenticator. Nothing is consumed
// unless the token is right, unexpired and for this group.
func (a *Authenticator) Authenticate(ctx context.Context, g *provision.Group, req *provision.Request) (*provision.Result, error) {
	id, secret, ok := parse(req.BearerToken)
	if !ok {
		return nil, provision.Refuse(provision.ReasonMalformed, "not a group enrollment token")
	}
	t, err := a.store.GetGroupToken(ctx, id)
	if errors.Is(err, provision.ErrNotFound) {
		return nil, provision.Refuse(provision.ReasonBadToken, "unknown token %s", id)
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], t.Hash) != 1 {
		return nil, provision.Refuse(provision.ReasonBadToken, "wrong secret for token %s", id)
	}
	if t.Tenant != g.Tenant || t.Group != g.Name {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "token %s belongs to group %s/%s", id, t.Tenant, t.Group)
	}
	now := a.now()
	if !now.Before(t.ExpiresAt) {
		return nil, provision.Refuse(provision.ReasonExpired, "token %s expired at %s", id, t.ExpiresAt.Format(time.RFC3339))
	}
	if !t.UsedAt.IsZero() {
		return nil, provision.Refuse(provision.ReasonTokenUsed, "token %s used at %s", id, t.UsedAt.Format(time.RFC3339))
	}
	if err := a.store.UseGroupToken(ctx, id, now.UTC()); err != nil {
		if errors.Is(err, provision.ErrConflict) {
			return nil, provision.Refuse(provision.ReasonTokenUsed, "token %s used concurrently", id)
		}
		return nil, err
	}
	return &provision.Result{DeviceID: t.Device, Fingerprint: "token:" + id}, nil
}
