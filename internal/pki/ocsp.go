package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"golang.org/x/crypto/ocsp"
	"math/big"
	"sync"
	"time"
)

// OCSP limits.
const (
	// MaxOCSPRequestSize bounds request bodies and GET paths: a request
	// for one certificate with a nonce is about 120 bytes; signed requests
	// with a certificate chain stay well under 10 KiB.
	MaxOCSPRequestSize = 10 << 10
	// MaxOCSPNonce is the largest nonce we echo (RFC 8954 section 2.1
	// sets 32 octets as the limit responders should accept).
	MaxOCSPNonce = 32
	// MaxOCSPCacheEntries bounds the pre-signed responses kept per issuing
	// CA (each is about 1 KiB with the responder certificate), so that
	// queries for many serials cannot exhaust memory. A full cache evicts
	// an arbitrary entry.
	MaxOCSPCacheEntries = 1 << 17
)

var (
	oidOCSPNonce   = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}
	oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}
	oidSHA1        = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256      = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
)

// ErrBadOCSPRequest is wrapped by errors parsing OCSP requests.
var ErrBadOCSPRequest = errors.New("pki: malformed OCSP request")

// OCSPRequest is the part of an RFC 6960 request the responder uses.
type OCSPRequest struct {
	HashAlgorithm  crypto.Hash // crypto.SHA1 or crypto.SHA256
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	SerialNumber   *big.Int
	// Nonce is the request's nonce extension (id-pkix-ocsp-nonce), to be
	// echoed verbatim; nil if there is none.
	Nonce *pkix.Extension
}

type asn1OCSPRequest struct {
	TBS asn1TBSRequest
	Sig asn1.RawValue `asn1:"explicit,tag:0,optional"`
}

type asn1TBSRequest struct {
	Version       int           `asn1:"explicit,tag:0,default:0,optional"`
	RequestorName asn1.RawValue `asn1:"explicit,tag:1,optional"`
	RequestList   []asn1Request
	Extensions    []pkix.Extension `asn1:"explicit,tag:2,optional"`
}

type asn1Request struct {
	Cert       asn1CertID
	Extensions []pkix.Extension `asn1:"explicit,tag:0,optional"`
}

type asn1CertID struct {
	HashAlgorithm  pkix.AlgorithmIdentifier
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	SerialNumber   *big.Int
}

// ParseOCSPRequest parses a DER OCSP request for exactly one certificate.
// Unlike x/crypto/ocsp.ParseRequest it keeps the nonce extension, which
// must be echoed in the response. Every error wraps ErrBadOCSPRequest.
func ParseOCSPRequest(der []byte) (*OCSPRequest, error) {
	if len(der) > MaxOCSPRequestSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadOCSPRequest, MaxOCSPRequestSize)
	}
	var req asn1OCSPRequest
	rest, err := asn1.Unmarshal(der, &req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadOCSPRequest, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: trailing data", ErrBadOCSPRequest)
	}
	if req.TBS.Version != 0 {
		return nil, fmt.Errorf("%w: version %d", ErrBadOCSPRequest, req.TBS.Version)
	}
	if len(req.TBS.RequestList) != 1 {
		return nil, fmt.Errorf("%w: %d certificates requested (ask for one per request)", ErrBadOCSPRequest, len(req.TBS.RequestList))
	}
	id := req.TBS.RequestList[0].Cert
	out := &OCSPRequest{IssuerNameHash: id.IssuerNameHash, IssuerKeyHash: id.IssuerKeyHash, SerialNumber: id.SerialNumber}
	switch {
	case id.HashAlgorithm.Algorithm.Equal(oidSHA1):
		out.HashAlgorithm = crypto.SHA1
	case id.HashAlgorithm.Algorithm.Equal(oidSHA256):
		out.HashAlgorithm = crypto.SHA256
	default:
		return nil, fmt.Errorf("%w: CertID hash algorithm %s (use SHA-1 or SHA-256)", ErrBadOCSPRequest, id.HashAlgorithm.Algorithm)
	}
	if len(out.IssuerNameHash) != out.HashAlgorithm.Size() || len(out.IssuerKeyHash) != out.HashAlgorithm.Size() {
		return nil, fmt.Errorf("%w: CertID hash lengths", ErrBadOCSPRequest)
	}
	if out.SerialNumber == nil || out.SerialNumber.Sign() <= 0 || out.SerialNumber.BitLen() > 8*maxSerialBytes {
		return nil, fmt.Errorf("%w: serial number out of range", ErrBadOCSPRequest)
	}
	for i := range req.TBS.Extensions {
		e := &req.TBS.Extensions[i]
		if !e.Id.Equal(oidOCSPNonce) {
			continue
		}
		if out.Nonce != nil {
			return nil, fmt.Errorf("%w: two nonces", ErrBadOCSPRequest)
		}
		// RFC 8954: the value is an OCTET STRING holding the nonce; some
		// old clients send the bare nonce. Bound both forms.
		n := len(e.Value)
		var inner []byte
		if r, err := asn1.Unmarshal(e.Value, &inner); err == nil && len(r) == 0 {
			n = len(inner)
		}
		if n < 1 || n > MaxOCSPNonce {
			return nil, fmt.Errorf("%w: nonce of %d octets (1 to %d allowed)", ErrBadOCSPRequest, n, MaxOCSPNonce)
		}
		out.Nonce = &pkix.Extension{Id: oidOCSPNonce, Value: bytes.Clone(e.Value)}
	}
	return out, nil
}

// responder is the delegated OCSP responder of one issuing CA.
type responder struct {
	mu    sync.RWMutex
	cert  *x509.Certificate
	key   crypto.Signer
	cache map[ocspKey]*ocspEntry
	// known maps the DER of nonce-less requests already answered to their
	// cache key, so repeated requests skip ASN.1 parsing. It holds no
	// status, so it needs no invalidation.
	known map[string]ocspKey
	gen   uint64 // bumped on every status change, to drop racing cache fills
}

// cached returns the cached response for a request seen before.
func (r *responder) cached(der []byte, now time.Time) (*ocspEntry, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.known[string(der)]
	if !ok {
		return nil, false
	}
	e, ok := r.cache[k]
	if !ok || !now.Before(e.refreshAt) {
		return nil, false
	}
	return e, true
}

type ocspKey struct {
	serial string // minimal big-endian bytes
	hash   crypto.Hash
}

type ocspEntry struct {
	der        []byte
	nextUpdate time.Time
	refreshAt  time.Time
}

// newResponder makes a fresh responder key (in memory only: it is not a
// CA key and is replaced every few days) and has the CA certify it.
func (a *Authority) newResponder(ctx context.Context, st *caState) (*responder, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := a.cfg.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Ward " + st.rec.Tenant + " OCSP Responder", Organization: []string{"Ward"}, OrganizationalUnit: []string{st.rec.Tenant}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(a.cfg.OCSPSignerValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		BasicConstraintsValid: true,
		// id-pkix-ocsp-nocheck: relying parties must not check the
		// responder's own status (RFC 6960 4.2.2.2.1), hence the short life.
		ExtraExtensions: []pkix.Extension{{Id: oidOCSPNoCheck, Value: []byte{0x05, 0x00}}},
	}
	if tmpl.NotAfter.After(st.cert.NotAfter) {
		tmpl.NotAfter = st.cert.NotAfter
	}
	cert, _, err := a.issueCert(ctx, st, tmpl, key.Public(), CertRecord{Tenant: st.rec.Tenant, CAID: st.rec.ID, Profile: string(profileOCSP)})
	if err != nil {
		return nil, fmt.Errorf("pki: issue OCSP responder certificate for %s: %w", st.rec.ID, err)
	}
	return &responder{cert: cert, key: key, cache: make(map[ocspKey]*ocspEntry), known: make(map[string]ocspKey)}, nil
}

// maintainResponder renews the responder certificate when a third of its
// life is left and drops expired cached responses.
func (a *Authority) maintainResponder(ctx context.Context, st *caState, now time.Time) error {
	r := st.ocsp
	r.mu.RLock()
	renew := now.After(r.cert.NotAfter.Add(-a.cfg.OCSPSignerValidity / 3))
	r.mu.RUnlock()
	if renew {
		nr, err := a.newResponder(ctx, st)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.cert, r.key = nr.cert, nr.key
		r.cache = make(map[ocspKey]*ocspEntry)
		r.gen++
		r.mu.Unlock()
		return nil
	}
	r.mu.Lock()
	for k, e := range r.cache {
		if !now.Before(e.refreshAt) {
			delete(r.cache, k)
		}
	}
	r.mu.Unlock()
	return nil
}

// ocspStatusChanged replaces cached responses for rec's serial with a
// freshly signed one (pre-signing the SHA-1 form that clients use most).
func (a *Authority) ocspStatusChanged(st *caState, rec CertRecord) {
	serial, err := ParseSerial(rec.Serial)
	if err != nil {
		return
	}
	r := st.ocsp
	var buf [maxSerialBytes]byte
	k, _ := serialKey(&buf, serial)
	r.mu.Lock()
	delete(r.cache, ocspKey{string(k), crypto.SHA1})
	delete(r.cache, ocspKey{string(k), crypto.SHA256})
	r.gen++
	r.mu.Unlock()
	der, e, err := a.signOCSP(st, &OCSPRequest{HashAlgorithm: crypto.SHA1, SerialNumber: serial}, &rec)
	if err != nil {
		a.log.Error("pki: pre-sign OCSP response", "ca", st.rec.ID, "err", err)
		return
	}
	e.der = der
	r.mu.Lock()
	r.put(ocspKey{string(k), crypto.SHA1}, e)
	r.mu.Unlock()
}

// put stores e, evicting an arbitrary entry when full. r.mu must be held.
func (r *responder) put(k ocspKey, e *ocspEntry) {
	if len(r.cache) >= MaxOCSPCacheEntries {
		for old := range r.cache {
			delete(r.cache, old)
			break
		}
	}
	r.cache[k] = e
}

// respondOCSP answers a parsed request for CA st. It returns the DER
// response and whether it may be cached by HTTP intermediaries.
func (a *Authority) respondOCSP(ctx context.Context, st *caState, raw []byte, req *OCSPRequest) ([]byte, *ocspEntry, error) {
	var nameHash, keyHash []byte
	if req.HashAlgorithm == crypto.SHA1 {
		nameHash, keyHash = st.nameHash1, st.keyHash1
	} else {
		nameHash, keyHash = st.nameHash256, st.keyHash256
	}
	if !bytes.Equal(nameHash, req.IssuerNameHash) || !bytes.Equal(keyHash, req.IssuerKeyHash) {
		return ocsp.UnauthorizedErrorResponse, nil, nil
	}
	r := st.ocsp
	now := a.cfg.Now()
	var buf [maxSerialBytes]byte
	sk, _ := serialKey(&buf, req.SerialNumber)
	if req.Nonce == nil {
		r.mu.RLock()
		e, ok := r.cache[ocspKey{string(sk), req.HashAlgorithm}]
		r.mu.RUnlock()
		if ok && now.Before(e.refreshAt) {
			return e.der, e, nil
		}
	}
	r.mu.RLock()
	gen := r.gen
	r.mu.RUnlock()
	var recp *CertRecord
	rec, err := a.store.GetCert(ctx, SerialString(req.SerialNumber))
	switch {
	case err == nil && rec.CAID == st.rec.ID:
		recp = &rec
	case err == nil || errors.Is(err, ErrNotFound):
		// Not ours: unknown.
	default:
		return nil, nil, err
	}
	der, e, err := a.signOCSP(st, req, recp)
	if err != nil {
		return nil, nil, err
	}
	if req.Nonce != nil || recp == nil {
		return der, nil, nil // nonce responses are one-off; unknowns are not worth memory
	}
	e.der = der
	r.mu.Lock()
	if r.gen == gen {
		k := ocspKey{string(sk), req.HashAlgorithm}
		r.put(k, e)
		if len(r.known) >= MaxOCSPCacheEntries {
			clear(r.known)
		}
		r.known[string(raw)] = k
	}
	r.mu.Unlock()
	return der, e, nil
}

// signOCSP signs a response for req; rec is nil for serials we did not
// issue.
func (a *Authority) signOCSP(st *caState, req *OCSPRequest, rec *CertRecord) ([]byte, *ocspEntry, error) {
	r := st.ocsp
	r.mu.RLock()
	cert, key := r.cert, r.key
	r.mu.RUnlock()
	now := a.cfg.Now().UTC().Truncate(time.Second)
	next := now.Add(a.cfg.OCSPValidity)
	if next.After(cert.NotAfter) {
		next = cert.NotAfter
	}
	single := respSingle{
		CertID: respCertID{
			HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA1, Parameters: asn1.NullRawValue},
			NameHash:      st.nameHash1,
			IssuerKeyHash: st.keyHash1,
			SerialNumber:  req.SerialNumber,
		},
		ThisUpdate: now,
		NextUpdate: next,
	}
	if req.HashAlgorithm == crypto.SHA256 {
		single.CertID.HashAlgorithm.Algorithm = oidSHA256
		single.CertID.NameHash, single.CertID.IssuerKeyHash = st.nameHash256, st.keyHash256
	}
	switch {
	case rec == nil:
		single.Unknown = true
	case rec.Status == CertRevoked:
		single.Revoked = respRevokedInfo{RevocationTime: rec.RevokedAt.UTC(), Reason: asn1.Enumerated(rec.Reason)}
	default:
		single.Good = true
	}
	data := respData{
		ResponderID: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, IsCompound: true, Bytes: r.keyIDFor(cert)},
		ProducedAt:  now,
		Responses:   []respSingle{single},
	}
	if req.Nonce != nil {
		data.Extensions = []pkix.Extension{*req.Nonce}
	}
	der, err := signBasicResponse(data, cert, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign OCSP response: %w", err)
	}
	return der, &ocspEntry{nextUpdate: next, refreshAt: now.Add(a.cfg.OCSPValidity / 2)}, nil
}

// OCSP response structures (RFC 6960 section 4.2.1). x/crypto/ocsp cannot
// put a nonce in responseExtensions, where clients look for it, nor take
// an injected clock for producedAt, so responses are built here.
type respCertID struct {
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	IssuerKeyHash []byte
	SerialNumber  *big.Int
}

type respRevokedInfo struct {
	RevocationTime time.Time       `asn1:"generalized"`
	Reason         asn1.Enumerated `asn1:"explicit,tag:0,optional"`
}

type respSingle struct {
	CertID     respCertID
	Good       asn1.Flag       `asn1:"tag:0,optional"`
	Revoked    respRevokedInfo `asn1:"tag:1,optional"`
	Unknown    asn1.Flag       `asn1:"tag:2,optional"`
	ThisUpdate time.Time       `asn1:"generalized"`
	NextUpdate time.Time       `asn1:"generalized,explicit,tag:0,optional"`
}

type respData struct {
	ResponderID asn1.RawValue
	ProducedAt  time.Time `asn1:"generalized"`
	Responses   []respSingle
	Extensions  []pkix.Extension `asn1:"explicit,tag:1,optional"`
}

type respBasic struct {
	TBSResponseData    asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          asn1.BitString
	Certificates       []asn1.RawValue `asn1:"explicit,tag:0,optional"`
}

type respBytes struct {
	ResponseType asn1.ObjectIdentifier
	Response     []byte
}

type respOuter struct {
	Status   asn1.Enumerated
	Response respBytes `asn1:"explicit,tag:0,optional"`
}

var (
	oidOCSPBasic       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

// keyIDFor is the DER OCTET STRING of the SHA-1 hash of the responder's
// public key, for ResponderID byKey.
func (r *responder) keyIDFor(cert *x509.Certificate) []byte {
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	_, _ = asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki)
	h := sha1.Sum(spki.PublicKey.RightAlign())
	b, _ := asn1.Marshal(h[:])
	return b
}

// signBasicResponse signs data with the responder key (always P-256,
// see newResponder) and wraps it in a successful OCSPResponse.
func signBasicResponse(data respData, cert *x509.Certificate, key crypto.Signer) ([]byte, error) {
	tbs, err := asn1.Marshal(data)
	if err != nil {
		return nil, err
	}
	h := crypto.SHA256.New()
	h.Write(tbs)
	sig, err := key.Sign(rand.Reader, h.Sum(nil), crypto.SHA256)
	if err != nil {
		return nil, err
	}
	basic, err := asn1.Marshal(respBasic{
		TBSResponseData:    asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256},
		Signature:          asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
		Certificates:       []asn1.RawValue{{FullBytes: cert.Raw}},
	})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(respOuter{Response: respBytes{ResponseType: oidOCSPBasic, Response: basic}})
}
