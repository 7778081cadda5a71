// Package symkey authenticates devices by a key derived from a group key,
// as Azure DPS group enrollments do: K_dev = HMAC-SHA256(groupKey,
// deviceID). The factory writes K_dev into each device (DeriveDeviceKey,
// "ward group derive-key"); the server stores only the group key, sealed
// by the tenant's data key, and recomputes K_dev.
//
// The device presents a short-lived token (wire.NewSymKeyToken) MACed by
// K_dev over its device ID, expiry, a random nonce, and the tenant and
// group. A token is accepted once: its nonce is remembered until the
// token expires, in a bounded in-memory cache and in the store
// (provision.Store.ConsumeNonce) so that a replay to another server node
// is refused too.
//
// A leaked group key lets its holder make any device of the group; keep it
// in the factory's HSM and prefer x509 or TPM groups where devices can.
package symkey

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/wire"
)

// GroupKeySize is the size of a group key: 256 bits, HMAC-SHA256's block
// strength.
const GroupKeySize = 32

// MaxReplayCache bounds the in-memory nonce cache. At the maximum token
// lifetime of 10 minutes it holds 100 enrollments a second; beyond it the
// store's check alone refuses replays.
const MaxReplayCache = 60000

// GroupKeyAAD is the sealing context of a group key.
func GroupKeyAAD(groupID string) []byte {
	return []byte("ward provision symmetric group key\x00" + groupID)
}

// NewGroupKey makes a random group key for g and returns it and its
// sealed form (for provision.SymmetricConfig.SealedKey). Show the key to
// the operator once, for the factory, and forget it.
func NewGroupKey(s provision.Sealer, groupID string) (key, sealed []byte, err error) {
	key = make([]byte, GroupKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, err
	}
	sealed, err = s.Seal(key, GroupKeyAAD(groupID))
	return key, sealed, err
}

// DeriveDeviceKey returns a device's key for the factory line.
func DeriveDeviceKey(groupKey []byte, deviceID string) []byte {
	return wire.DeriveSymmetricDeviceKey(groupKey, deviceID)
}

// Authenticator implements provision.Authenticator for MechanismSymmetric.
type Authenticator struct {
	store   provision.Store
	sealers provision.Sealers
	now     func() time.Time

	mu   sync.Mutex
	seen map[string]time.Time // nonce key -> token expiry
}

var _ provision.Authenticator = (*Authenticator)(nil)

// New returns an authenticator.
func New(store provision.Store, sealers provision.Sealers, now func() time.Time) *Authenticator {
	return &Authenticator{store: store, sealers: sealers, now: now, seen: map[string]time.Time{}}
}

// Authenticate implements provision.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context, g *provision.Group, req *provision.Request) (*provision.Result, error) {
	if g.Symmetric == nil {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "group %q is not a symmetric-key group", g.Name)
	}
	t, err := wire.ParseSymKeyToken(req.BearerToken)
	if err != nil {
		return nil, &provision.Error{Reason: provision.ReasonMalformed, Err: err}
	}
	s, err := a.sealers(ctx, g.Tenant)
	if err != nil {
		return nil, err
	}
	groupKey, err := s.Open(g.Symmetric.SealedKey, GroupKeyAAD(g.ID))
	if err != nil {
		return nil, fmt.Errorf("symkey: open group key of %q: %w", g.Name, err)
	}
	if !t.VerifyMAC(wire.DeriveSymmetricDeviceKey(groupKey, t.DeviceID), g.Tenant, g.Name) {
		return nil, provision.Refuse(provision.ReasonBadMAC, "token for device %q has a wrong MAC", t.DeviceID)
	}
	now := a.now()
	if !now.Before(t.Expiry) {
		return nil, provision.Refuse(provision.ReasonExpired, "token expired at %s", t.Expiry.UTC().Format(time.RFC3339))
	}
	if t.Expiry.Sub(now) > wire.SymKeyMaxLifetime {
		return nil, provision.Refuse(provision.ReasonExpired, "token expires more than %v ahead", wire.SymKeyMaxLifetime)
	}
	nk := "symkey:" + g.ID + ":" + base64.RawURLEncoding.EncodeToString(t.Nonce)
	if !a.remember(nk, t.Expiry, now) {
		return nil, provision.Refuse(provision.ReasonReplay, "token nonce already used")
	}
	if err := a.store.ConsumeNonce(ctx, nk, t.Expiry, now); err != nil {
		if errors.Is(err, provision.ErrConflict) {
			return nil, provision.Refuse(provision.ReasonReplay, "token nonce already used on another node")
		}
		return nil, err
	}
	return &provision.Result{DeviceID: t.DeviceID, Fingerprint: "symkey:" + g.ID}, nil
}

// remember records nonce key k until exp; false if it is already there.
func (a *Authenticator) remember(k string, exp, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.seen[k]; ok && e.After(now) {
		return false
	}
	if len(a.seen) >= MaxReplayCache {
		for n, e := range a.seen {
			if !e.After(now) {
				delete(a.seen, n)
			}
		}
		if len(a.seen) >= MaxReplayCache {
			// Full of live nonces: forget arbitrary ones; the store's
			// check still refuses their replays.
			n := 0
			for k := range a.seen {
				delete(a.seen, k)
				if n++; n >= MaxReplayCache/10 {
					break
				}
			}
		}
	}
	a.seen[k] = exp
	return true
}
