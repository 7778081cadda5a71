// Package attestsql keeps attestation state (attest.Store) in the server's
// SQL database, SQLite or PostgreSQL, so that several server nodes share
// challenges, AKs and counters. Its tables come from migration 00009.
//
// Every conditional write is one SQL statement, never read-then-write, so
// it holds between nodes: a challenge is taken by DELETE ... RETURNING, the
// per-device challenge bound is a unique (device, slot) key filled by a
// conditional upsert, and TPM counters advance by an upsert that keeps
// the highest and returns the value it replaced.
package attestsql

import (
	"context"
	"crypto"
	"crypto/x509"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/store/sqlstore"
)

// Store is an attest.Store (and attest.RefKeys) over database/sql.
type Store struct {
	db *sql.DB
	d  sqlstore.Dialect
}

var (
	_ attest.Store   = (*Store)(nil)
	_ attest.RefKeys = (*Store)(nil)
)

// New returns a Store on db, whose schema must be migrated (sqlite.Open
// and postgres.Open do it); d is the engine's dialect
// (sqlstore.DB.SQLDialect).
func New(db *sql.DB, d sqlstore.Dialect) *Store { return &Store{db: db, d: d} }

func (s *Store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return s.db.ExecContext(ctx, s.d.Rebind(q), args...)
}

func (s *Store) row(ctx context.Context, q string, args ...any) *sql.Row {
	return s.db.QueryRowContext(ctx, s.d.Rebind(q), args...)
}

func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("attestation %s: %w", what, attest.ErrNotFound)
	}
	return fmt.Errorf("attestation %s: %w", what, err)
}

// Times are Unix nanoseconds, as in package sqlstore.
func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromTS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// blob writes nil as an empty value (drivers differ on nil []byte) and
// bytes reads an empty value back as nil, so a nil BoundSPKI ("not a
// renewal challenge") survives the round trip.
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func bytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// PutChallenge implements attest.Store. The challenge goes into the first
// of the device's maxPending slots that is free or holds an expired
// challenge; each try is one upsert that writes only if the slot's
// occupant has expired, so concurrent callers on any node can never fill
// more than maxPending slots.
func (s *Store) PutChallenge(ctx context.Context, c attest.Challenge, now time.Time, maxPending int) error {
	pcrs, err := json.Marshal(c.PCRs)
	if err != nil {
		return err
	}
	for slot := 0; slot < maxPending; slot++ {
		res, err := s.exec(ctx, `INSERT INTO attest_challenges
			(tenant_id, device_id, id, slot, nonce, pcrs, expires, bound_spki) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id, device_id, slot) DO UPDATE SET
				id = excluded.id, nonce = excluded.nonce, pcrs = excluded.pcrs,
				expires = excluded.expires, bound_spki = excluded.bound_spki
			WHERE attest_challenges.expires < ?`,
			c.Tenant, c.Device, c.ID, slot, blob(c.Nonce), string(pcrs), ts(c.Expires), blob(c.BoundSPKI), ts(now))
		if err != nil {
			return fmt.Errorf("store attestation challenge: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
	return attest.ErrTooManyChallenges
}

// TakeChallenge implements attest.Store.
func (s *Store) TakeChallenge(ctx context.Context, tenant, device, id string) (attest.Challenge, error) {
	c := attest.Challenge{Tenant: tenant, Device: device, ID: id}
	var pcrs string
	var expires int64
	err := s.row(ctx, `DELETE FROM attest_challenges WHERE tenant_id = ? AND device_id = ? AND id = ?
		RETURNING nonce, pcrs, expires, bound_spki`, tenant, device, id).
		Scan(&c.Nonce, &pcrs, &expires, &c.BoundSPKI)
	if err != nil {
		return attest.Challenge{}, notFound(err, "challenge")
	}
	if err := json.Unmarshal([]byte(pcrs), &c.PCRs); err != nil {
		return attest.Challenge{}, fmt.Errorf("attestation challenge: stored PCR list: %w", err)
	}
	c.Nonce, c.BoundSPKI, c.Expires = bytes(c.Nonce), bytes(c.BoundSPKI), fromTS(expires)
	return c, nil
}

// PutActivation implements attest.Store.
func (s *Store) PutActivation(ctx context.Context, a attest.Activation) error {
	_, err := s.exec(ctx, `INSERT INTO attest_activations
		(tenant_id, device_id, id, secret_hash, ak_public, ek_key_hash, ek_issuer, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, device_id, id) DO UPDATE SET
			secret_hash = excluded.secret_hash, ak_public = excluded.ak_public, ek_key_hash = excluded.ek_key_hash,
			ek_issuer = excluded.ek_issuer, expires = excluded.expires`,
		a.Tenant, a.Device, a.ID, blob(a.SecretHash), blob(a.AKPublic), blob(a.EKKeyHash), a.EKIssuer, ts(a.Expires))
	if err != nil {
		return fmt.Errorf("store AK activation: %w", err)
	}
	return nil
}

// TakeActivation implements attest.Store.
func (s *Store) TakeActivation(ctx context.Context, tenant, device, id string) (attest.Activation, error) {
	a := attest.Activation{Tenant: tenant, Device: device, ID: id}
	var expires int64
	err := s.row(ctx, `DELETE FROM attest_activations WHERE tenant_id = ? AND device_id = ? AND id = ?
		RETURNING secret_hash, ak_public, ek_key_hash, ek_issuer, expires`, tenant, device, id).
		Scan(&a.SecretHash, &a.AKPublic, &a.EKKeyHash, &a.EKIssuer, &expires)
	if err != nil {
		return attest.Activation{}, notFound(err, "activation")
	}
	a.SecretHash, a.AKPublic, a.EKKeyHash = bytes(a.SecretHash), bytes(a.AKPublic), bytes(a.EKKeyHash)
	a.Expires = fromTS(expires)
	return a, nil
}

// PutAK implements attest.Store.
func (s *Store) PutAK(ctx context.Context, ak attest.AKRecord) error {
	_, err := s.exec(ctx, `INSERT INTO attest_aks (tenant_id, device_id, ak_public, ek_key_hash, ek_issuer, enrolled)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, device_id) DO UPDATE SET
			ak_public = excluded.ak_public, ek_key_hash = excluded.ek_key_hash,
			ek_issuer = excluded.ek_issuer, enrolled = excluded.enrolled`,
		ak.Tenant, ak.Device, blob(ak.Public), blob(ak.EKKeyHash), ak.EKIssuer, ts(ak.Enrolled))
	if err != nil {
		return fmt.Errorf("store AK: %w", err)
	}
	return nil
}

// AK implements attest.Store.
func (s *Store) AK(ctx context.Context, tenant, device string) (attest.AKRecord, error) {
	ak := attest.AKRecord{Tenant: tenant, Device: device}
	var enrolled int64
	err := s.row(ctx, `SELECT ak_public, ek_key_hash, ek_issuer, enrolled FROM attest_aks
		WHERE tenant_id = ? AND device_id = ?`, tenant, device).
		Scan(&ak.Public, &ak.EKKeyHash, &ak.EKIssuer, &enrolled)
	if err != nil {
		return attest.AKRecord{}, notFound(err, "key")
	}
	ak.Public, ak.EKKeyHash, ak.Enrolled = bytes(ak.Public), bytes(ak.EKKeyHash), fromTS(enrolled)
	return ak, nil
}

// PutRefValues implements attest.Store. Only the signed document is
// stored; it must be r's canonical document (as attest.ParseRefValues
// returns it) and name r's hardware model and release, so that what is
// read back is exactly what the signature covers.
func (s *Store) PutRefValues(ctx context.Context, r attest.RefValues) error {
	p, err := attest.ParseRefValues(r.Doc)
	if err != nil {
		return fmt.Errorf("store reference values: %w", err)
	}
	if p.HWModel != r.HWModel || p.Release != r.Release {
		return fmt.Errorf("store reference values: document is for %s %s, not %s %s",
			p.HWModel, p.Release, r.HWModel, r.Release)
	}
	_, err = s.exec(ctx, `INSERT INTO attest_refvalues (tenant_id, hw_model, rel, doc, signature, imported)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, hw_model, rel) DO UPDATE SET
			doc = excluded.doc, signature = excluded.signature, imported = excluded.imported`,
		r.Tenant, r.HWModel, r.Release, p.Doc, blob(r.Signature), ts(r.Imported))
	if err != nil {
		return fmt.Errorf("store reference values: %w", err)
	}
	return nil
}

// RefValues implements attest.Store.
func (s *Store) RefValues(ctx context.Context, tenant, hwModel, release string) (attest.RefValues, error) {
	var doc, sig []byte
	var imported int64
	err := s.row(ctx, `SELECT doc, signature, imported FROM attest_refvalues
		WHERE tenant_id = ? AND hw_model = ? AND rel = ?`, tenant, hwModel, release).
		Scan(&doc, &sig, &imported)
	if err != nil {
		return attest.RefValues{}, notFound(err, "reference values")
	}
	r, err := attest.ParseRefValues(doc)
	if err != nil {
		return attest.RefValues{}, fmt.Errorf("stored reference values for %s %s: %w", hwModel, release, err)
	}
	r.Tenant, r.Signature, r.Imported = tenant, bytes(sig), fromTS(imported)
	return *r, nil
}

// PutResult implements attest.Store.
func (s *Store) PutResult(ctx context.Context, r attest.Result) error {
	// Verdict times are kept in UTC so that they read back equal to what
	// was written, whatever the writer's zone.
	r.Verdict.Time = r.Verdict.Time.UTC()
	verdict, err := json.Marshal(r.Verdict)
	if err != nil {
		return err
	}
	summary, err := json.Marshal(r.Summary)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO attest_results (tenant_id, device_id, challenge_id, verdict, bound_spki, summary)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, device_id) DO UPDATE SET
			challenge_id = excluded.challenge_id, verdict = excluded.verdict,
			bound_spki = excluded.bound_spki, summary = excluded.summary`,
		r.Tenant, r.Device, r.ChallengeID, verdict, blob(r.BoundSPKI), summary)
	if err != nil {
		return fmt.Errorf("store attestation result: %w", err)
	}
	return nil
}

// LastResult implements attest.Store.
func (s *Store) LastResult(ctx context.Context, tenant, device string) (attest.Result, error) {
	r := attest.Result{Tenant: tenant, Device: device}
	var verdict, summary []byte
	err := s.row(ctx, `SELECT challenge_id, verdict, bound_spki, summary FROM attest_results
		WHERE tenant_id = ? AND device_id = ?`, tenant, device).
		Scan(&r.ChallengeID, &verdict, &r.BoundSPKI, &summary)
	if err != nil {
		return attest.Result{}, notFound(err, "result")
	}
	if err := json.Unmarshal(verdict, &r.Verdict); err != nil {
		return attest.Result{}, fmt.Errorf("stored attestation verdict: %w", err)
	}
	if err := json.Unmarshal(summary, &r.Summary); err != nil {
		return attest.Result{}, fmt.Errorf("stored attestation summary: %w", err)
	}
	r.BoundSPKI = bytes(r.BoundSPKI)
	return r, nil
}

// ordSize is the length of a counters ordering key.
const ordSize = 16

// ord encodes c so that byte order is attest.CountersAfter order.
func ord(c attest.Counters) []byte {
	b := make([]byte, ordSize)
	binary.BigEndian.PutUint32(b[0:], c.ResetCount)
	binary.BigEndian.PutUint32(b[4:], c.RestartCount)
	binary.BigEndian.PutUint64(b[8:], c.Clock)
	return b
}

func fromOrd(b []byte, safe int64) (attest.Counters, error) {
	if len(b) != ordSize {
		return attest.Counters{}, fmt.Errorf("stored TPM counters are %d bytes, want %d", len(b), ordSize)
	}
	return attest.Counters{
		ResetCount:   binary.BigEndian.Uint32(b[0:]),
		RestartCount: binary.BigEndian.Uint32(b[4:]),
		Clock:        binary.BigEndian.Uint64(b[8:]),
		Safe:         safe != 0,
	}, nil
}

// AdvanceCounters implements attest.Store in one statement: the upsert
// always writes the row, moving the old value into prev_* and keeping
// whichever of old and new is later, and returns prev_*. Both engines
// evaluate every SET expression against the row as it was, and serialise
// writers on the row, so each caller sees exactly the value it replaced.
func (s *Store) AdvanceCounters(ctx context.Context, tenant, device string, c attest.Counters) (attest.Counters, bool, error) {
	safe := int64(0)
	if c.Safe {
		safe = 1
	}
	var prevOrd []byte
	var prevSafe sql.NullInt64
	err := s.row(ctx, `INSERT INTO attest_counters (tenant_id, device_id, ord, safe, prev_ord, prev_safe)
		VALUES (?, ?, ?, ?, NULL, NULL)
		ON CONFLICT (tenant_id, device_id) DO UPDATE SET
			prev_ord = attest_counters.ord, prev_safe = attest_counters.safe,
			ord = CASE WHEN excluded.ord > attest_counters.ord THEN excluded.ord ELSE attest_counters.ord END,
			safe = CASE WHEN excluded.ord > attest_counters.ord THEN excluded.safe ELSE attest_counters.safe END
		RETURNING prev_ord, prev_safe`, tenant, device, ord(c), safe).Scan(&prevOrd, &prevSafe)
	if err != nil {
		return attest.Counters{}, false, fmt.Errorf("advance TPM counters: %w", err)
	}
	if prevOrd == nil {
		return attest.Counters{}, false, nil
	}
	prev, err := fromOrd(prevOrd, prevSafe.Int64)
	if err != nil {
		return attest.Counters{}, false, err
	}
	return prev, true, nil
}

// Counters returns the device's highest stored counters, for operators
// and tests; found is false if none were stored.
func (s *Store) Counters(ctx context.Context, tenant, device string) (c attest.Counters, found bool, err error) {
	var b []byte
	var safe int64
	err = s.row(ctx, `SELECT ord, safe FROM attest_counters WHERE tenant_id = ? AND device_id = ?`, tenant, device).Scan(&b, &safe)
	if errors.Is(err, sql.ErrNoRows) {
		return attest.Counters{}, false, nil
	}
	if err != nil {
		return attest.Counters{}, false, fmt.Errorf("TPM counters: %w", err)
	}
	c, err = fromOrd(b, safe)
	return c, err == nil, err
}

// SetPolicy stores a group's policy (group "" for the tenant default).
func (s *Store) SetPolicy(ctx context.Context, tenant, group string, p attest.Policy) error {
	doc, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO attest_policies (tenant_id, grp, policy) VALUES (?, ?, ?)
		ON CONFLICT (tenant_id, grp) DO UPDATE SET policy = excluded.policy`, tenant, group, doc)
	if err != nil {
		return fmt.Errorf("store attestation policy: %w", err)
	}
	return nil
}

// Policy implements attest.Store: the group's row is preferred to the
// tenant default in one query.
func (s *Store) Policy(ctx context.Context, tenant, group string) (attest.Policy, error) {
	var doc []byte
	err := s.row(ctx, `SELECT policy FROM attest_policies WHERE tenant_id = ? AND (grp = ? OR grp = '')
		ORDER BY grp DESC LIMIT 1`, tenant, group).Scan(&doc)
	if err != nil {
		return attest.Policy{}, notFound(err, "policy")
	}
	var p attest.Policy
	if err := json.Unmarshal(doc, &p); err != nil {
		return attest.Policy{}, fmt.Errorf("stored attestation policy: %w", err)
	}
	return p, nil
}

// SetRefValueKey stores a tenant's reference-value signing key.
func (s *Store) SetRefValueKey(ctx context.Context, tenant string, k crypto.PublicKey) error {
	spki, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return fmt.Errorf("reference-value key: %w", err)
	}
	_, err = s.exec(ctx, `INSERT INTO attest_refkeys (tenant_id, spki) VALUES (?, ?)
		ON CONFLICT (tenant_id) DO UPDATE SET spki = excluded.spki`, tenant, spki)
	if err != nil {
		return fmt.Errorf("store reference-value key: %w", err)
	}
	return nil
}

// RefValueKey implements attest.RefKeys.
func (s *Store) RefValueKey(ctx context.Context, tenant string) (crypto.PublicKey, error) {
	var spki []byte
	if err := s.row(ctx, `SELECT spki FROM attest_refkeys WHERE tenant_id = ?`, tenant).Scan(&spki); err != nil {
		return nil, notFound(err, "reference-value key")
	}
	k, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, fmt.Errorf("stored reference-value key: %w", err)
	}
	return k, nil
}

// Tables lists this package's tables, each keyed by tenant_id: deleting a
// tenant must empty them too.
var Tables = []string{
	"attest_challenges", "attest_activations", "attest_aks", "attest_refvalues",
	"attest_results", "attest_counters", "attest_policies", "attest_refkeys",
}

// DeleteTenant removes all of a tenant's attestation state.
func (s *Store) DeleteTenant(ctx context.Context, tenant string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, t := range Tables {
		if _, err := tx.ExecContext(ctx, s.d.Rebind(`DELETE FROM `+t+` WHERE tenant_id = ?`), tenant); err != nil {
			return fmt.Errorf("delete tenant attestation state: %w", err)
		}
	}
	return tx.Commit()
}
