package tenant

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

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// Roles of operator tokens.
const (
	RoleAdmin    = "admin"    // everything, including tokens and tenants
	RoleOperator = "operator" // read and change fleet resources
	RoleViewer   = "viewer"   // read fleet resources
	RoleAuditor  = "auditor"  // read fleet resources and the audit log
)

// Perm is what a route requires.
type Perm int

// Permissions, from weakest to strongest. They are not strictly ordered:
// an auditor may read the audit log but not write.
const (
	PermRead  Perm = iota // view resources
	PermWrite             // change resources
	PermAudit             // read the audit log
	PermAdmin             // manage tokens, tenants
)

func (p Perm) String() string {
	return [...]string{"read", "write", "audit", "admin"}[p]
}

var rolePerms = map[string][]Perm{
	RoleAdmin:    {PermRead, PermWrite, PermAudit, PermAdmin},
	RoleOperator: {PermRead, PermWrite},
	RoleViewer:   {PermRead},
	RoleAuditor:  {PermRead, PermAudit},
}

// ValidRole reports whether r names a role.
func ValidRole(r string) bool { _, ok := rolePerms[r]; return ok }

// Principal is an authenticated API caller.
type Principal struct {
	TokenID string
	Role    string
	Tenant  string // "" for a global principal
	Name    string
}

// Actor is how the principal appears in the audit log.
func (p *Principal) Actor() string { return "token:" + p.TokenID }

// Allows reports whether p may use perm on tenant ("" = a global resource).
// A tenant-scoped principal never reaches global resources or other tenants.
func (p *Principal) Allows(perm Perm, tenant string) bool {
	if p.Tenant != "" && p.Tenant != tenant {
		return false
	}
	for _, q := range rolePerms[p.Role] {
		if q == perm {
			return true
		}
	}
	return false
}

// Token string formats. The prefix lets secret scanners find leaked tokens
// and tells API and enrollment tokens apart before any lookup.
const (
	apiPrefix    = "wardapi_"
	enrollPrefix = "wardenr_"
	idBytes      = 8
	secretBytes  = 32 // 256 bits of secret
	// maxTokenLen bounds the work done on an untrusted Authorization header.
	maxTokenLen = 128
)

// ErrUnauthenticated is wrapped by every authentication failure. Its text is
// deliberately the same for unknown, wrong, expired and revoked tokens.
var ErrUnauthenticated = errors.New("invalid, expired or revoked token")

// ErrValidation marks request errors whose message is safe to return.
var ErrValidation = errors.New("invalid request")

func invalid(msg string) error { return fmt.Errorf("%w: %s", ErrValidation, msg) }

// ErrForbidden means the caller may not do what it asked.
var ErrForbidden = errors.New("forbidden")

// Tokens mints, authenticates and revokes tokens.
type Tokens struct {
	store store.Store
	now   func() time.Time
}

// NewTokens returns a token service.
func NewTokens(s store.Store, now func() time.Time) *Tokens {
	return &Tokens{store: s, now: now}
}

// NewTokenRequest describes a token to mint.
type NewTokenRequest struct {
	Kind   string // store.TokenAPI (default) or store.TokenEnroll
	Role   string // API tokens
	Tenant string // "" = global (API tokens only)
	Device string // enrollment tokens: the device ID it may enroll
	Name   string
	TTL    time.Duration // 0 = no expiry (API tokens only)
}

// maxEnrollTTL caps how long a one-time enrollment token stays usable.
const maxEnrollTTL = 30 * 24 * time.Hour

// Create mints a token on behalf of by (nil = the system, at
// initialisation). The secret string is returned once and never stored.
func (t *Tokens) Create(ctx context.Context, by *Principal, req NewTokenRequest) (string, *store.Token, error) {
	if req.Kind == "" {
		req.Kind = store.TokenAPI
	}
	if req.TTL < 0 {
		return "", nil, invalid("ttl must not be negative")
	}
	if len(req.Name) > 200 {
		return "", nil, invalid("token name must be at most 200 characters")
	}
	prefix := apiPrefix
	switch req.Kind {
	case store.TokenAPI:
		if !ValidRole(req.Role) {
			return "", nil, invalid(fmt.Sprintf("unknown role %q (want admin, operator, viewer or auditor)", req.Role))
		}
		if req.Device != "" {
			return "", nil, invalid("only enrollment tokens name a device")
		}
		if by != nil && !by.Allows(PermAdmin, req.Tenant) {
			return "", nil, fmt.Errorf("%w: only an admin of that scope may create API tokens", ErrForbidden)
		}
	case store.TokenEnroll:
		prefix = enrollPrefix
		req.Role = ""
		if req.Tenant == "" {
			return "", nil, invalid("an enrollment token needs a tenant")
		}
		if err := wire.ValidateDeviceID(req.Device); err != nil {
			return "", nil, fmt.Errorf("%w: %v", ErrValidation, err)
		}
		if req.TTL == 0 || req.TTL > maxEnrollTTL {
			return "", nil, invalid(fmt.Sprintf("an enrollment token needs a ttl between 1s and %v", maxEnrollTTL))
		}
		if by != nil && !by.Allows(PermWrite, req.Tenant) {
			return "", nil, fmt.Errorf("%w: creating enrollment tokens needs write access to the tenant", ErrForbidden)
		}
	default:
		return "", nil, invalid(fmt.Sprintf("unknown token kind %q", req.Kind))
	}
	if req.Tenant != "" {
		if err := wire.ValidateTenantID(req.Tenant); err != nil {
			return "", nil, fmt.Errorf("%w: %v", ErrValidation, err)
		}
	}
	var id [idBytes]byte
	var secret [secretBytes]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", nil, err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", nil, err
	}
	sec := base64.RawURLEncoding.EncodeToString(secret[:])
	sum := sha256.Sum256([]byte(sec))
	now := t.now().UTC()
	tk := &store.Token{
		ID: hex.EncodeToString(id[:]), Hash: sum[:], Kind: req.Kind, Tenant: req.Tenant, Role: req.Role,
		Device: req.Device, Name: req.Name, CreatedAt: now, CreatedBy: "system",
	}
	if by != nil {
		tk.CreatedBy = by.Actor()
	}
	if req.TTL > 0 {
		tk.ExpiresAt = now.Add(req.TTL)
	}
	err := t.store.InTx(ctx, func(tx store.Tx) error {
		if req.Tenant != "" {
			if _, err := tx.GetTenant(ctx, req.Tenant); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("tenant %q: %w", req.Tenant, ErrNoTenant)
			} else if err != nil {
				return err
			}
		}
		if err := tx.CreateToken(ctx, tk); err != nil {
			return err
		}
		detail := "kind=" + tk.Kind
		if tk.Role != "" {
			detail += " role=" + tk.Role
		}
		if tk.Device != "" {
			detail += " device=" + tk.Device
		}
		_, err := audit.Append(ctx, tx, now, audit.Entry{Actor: tk.CreatedBy, Action: "token.create", Target: "token:" + tk.ID,
			Tenant: tk.Tenant, Detail: detail})
		return err
	})
	if err != nil {
		return "", nil, err
	}
	return prefix + tk.ID + "_" + sec, tk, nil
}

// parse splits a token string into kind, id and secret.
func parse(s string) (kind, id, secret string, ok bool) {
	if len(s) > maxTokenLen {
		return "", "", "", false
	}
	switch {
	case strings.HasPrefix(s, apiPrefix):
		kind, s = store.TokenAPI, s[len(apiPrefix):]
	case strings.HasPrefix(s, enrollPrefix):
		kind, s = store.TokenEnroll, s[len(enrollPrefix):]
	default:
		return "", "", "", false
	}
	if len(s) < 2*idBytes+1 || s[2*idBytes] != '_' {
		return "", "", "", false
	}
	id, secret = s[:2*idBytes], s[2*idBytes+1:]
	if _, err := hex.DecodeString(id); err != nil || len(secret) == 0 {
		return "", "", "", false
	}
	return kind, id, secret, true
}

// lookup authenticates a token string of the wanted kind.
func (t *Tokens) lookup(ctx context.Context, q store.Reader, s, wantKind string) (*store.Token, error) {
	kind, id, secret, ok := parse(s)
	if !ok || kind != wantKind {
		return nil, ErrUnauthenticated
	}
	tk, err := q.GetToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrUnauthenticated
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], tk.Hash) != 1 || tk.Kind != wantKind {
		return nil, ErrUnauthenticated
	}
	now := t.now()
	if !tk.RevokedAt.IsZero() || (!tk.ExpiresAt.IsZero() && !now.Before(tk.ExpiresAt)) {
		return nil, ErrUnauthenticated
	}
	return tk, nil
}

// Authenticate resolves an API token string to its principal.
func (t *Tokens) Authenticate(ctx context.Context, s string) (*Principal, error) {
	tk, err := t.lookup(ctx, t.store, s, store.TokenAPI)
	if err != nil {
		return nil, err
	}
	return &Principal{TokenID: tk.ID, Role: tk.Role, Tenant: tk.Tenant, Name: tk.Name}, nil
}

// Errors of enrollment-token redemption. They are distinct so that the
// audit log and security events can say why, while the device is told
// only that its credential was refused.
var (
	ErrTokenUsed        = errors.New("enrollment token already used")
	ErrTokenWrongDevice = errors.New("enrollment token is bound to another device")
	ErrTokenWrongTenant = errors.New("enrollment token belongs to another tenant")
)

// Redeem consumes a one-time enrollment token for (tenant, device) inside
// tx. It fails with ErrUnauthenticated (unknown, wrong, expired, revoked),
// ErrTokenUsed, ErrTokenWrongDevice or ErrTokenWrongTenant. Single use holds
// across server nodes: the store marks it used with a conditional update.
func (t *Tokens) Redeem(ctx context.Context, tx store.Tx, s, tenant, device string) (*store.Token, error) {
	tk, err := t.lookup(ctx, tx, s, store.TokenEnroll)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(tk.Tenant), []byte(tenant)) != 1 {
		return tk, ErrTokenWrongTenant
	}
	if subtle.ConstantTimeCompare([]byte(tk.Device), []byte(device)) != 1 {
		return tk, ErrTokenWrongDevice
	}
	if err := tx.UseToken(ctx, tk.ID, t.now().UTC()); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return tk, ErrTokenUsed
		}
		return tk, err
	}
	return tk, nil
}

// Check verifies, without spending it, that an enrollment token would be
// redeemable for (tenant, device) now: the same errors as Redeem. Callers
// check first, do their work, then Redeem in the transaction that commits
// the work, so that a token is spent if and only if the work is kept.
func (t *Tokens) Check(ctx context.Context, q store.Reader, s, tenant, device string) (*store.Token, error) {
	tk, err := t.lookup(ctx, q, s, store.TokenEnroll)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(tk.Tenant), []byte(tenant)) != 1 {
		return tk, ErrTokenWrongTenant
	}
	if subtle.ConstantTimeCompare([]byte(tk.Device), []byte(device)) != 1 {
		return tk, ErrTokenWrongDevice
	}
	if !tk.UsedAt.IsZero() {
		return tk, ErrTokenUsed
	}
	return tk, nil
}

// Revoke revokes an API or enrollment token by ID on behalf of by.
func (t *Tokens) Revoke(ctx context.Context, by *Principal, id string) error {
	return t.store.InTx(ctx, func(tx store.Tx) error {
		tk, err := tx.GetToken(ctx, id)
		if err != nil {
			return err
		}
		need := PermAdmin
		if tk.Kind == store.TokenEnroll {
			need = PermWrite
		}
		if !by.Allows(need, tk.Tenant) {
			// Same answer as a missing token: a tenant admin learns nothing
			// about other tenants' tokens.
			return fmt.Errorf("token: %w", store.ErrNotFound)
		}
		if err := tx.RevokeToken(ctx, id, t.now().UTC()); err != nil {
			return err
		}
		_, err = audit.Append(ctx, tx, t.now(), audit.Entry{Actor: by.Actor(), Action: "token.revoke", Target: "token:" + id, Tenant: tk.Tenant})
		return err
	})
}

// String never prints secrets; it exists so a Principal in a log is safe.
func (p *Principal) String() string {
	scope := "global"
	if p.Tenant != "" {
		scope = "tenant " + p.Tenant
	}
	return fmt.Sprintf("token %s (%s, %s)", p.TokenID, p.Role, scope)
}
