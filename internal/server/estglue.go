package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// estCA implements est.CA on the tenant CAs: simpleenroll authenticated by
// a one-time enrollment token, simplereenroll by the device's current
// operational certificate. The EST label names the tenant.
type estCA struct {
	s *Server
	// renewGrace lets an expired certificate renew for this long after
	// its notAfter (0: never).
	renewGrace time.Duration
}

var _ est.CA = (*estCA)(nil)

// maxChainLen bounds the client chain we look at (resource exhaustion).
const maxChainLen = 4

func (e *estCA) tenantOf(ctx context.Context, label string) (string, error) {
	// "<tenant>" or "<tenant>.<group>": the CA is the tenant's either way.
	label, _, _ = strings.Cut(label, ".")
	if err := wire.ValidateTenantID(label); err != nil {
		return "", est.NotFound("unknown EST label")
	}
	if _, err := e.s.store.GetTenant(ctx, label); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", est.NotFound("unknown EST label")
		}
		return "", err
	}
	return label, nil
}

func (e *estCA) CACerts(ctx context.Context, label string) ([]*x509.Certificate, error) {
	tid, err := e.tenantOf(ctx, label)
	if err != nil {
		return nil, err
	}
	var issuing, root *x509.Certificate
	for _, c := range e.s.PKI.CAs(tid) {
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			return nil, err
		}
		switch {
		case c.Kind == pki.KindIssuing && c.Status == pki.CAActive:
			issuing = cert
		case c.Kind == pki.KindRoot:
			root = cert
		}
	}
	if issuing == nil || root == nil {
		return nil, est.NotFound("this tenant has no active CA")
	}
	return []*x509.Certificate{issuing, root}, nil
}

func (e *estCA) CSRAttrs(ctx context.Context, label string) ([]byte, error) {
	if _, err := e.tenantOf(ctx, label); err != nil {
		return nil, err
	}
	return wire.DefaultCSRAttrs, nil
}

// audit records an EST decision. Refusals are security decisions too, and
// also go to the security event stream.
func (e *estCA) audit(ctx context.Context, actor, action, tid, target, result, detail string) {
	if result != audit.ResultOK {
		dev := ""
		if d, ok := strings.CutPrefix(target, "device:"); ok {
			dev = d
		}
		e.s.Monitor.Emit(monitor.Event{Type: monitor.EnrollRefused, Tenant: tid, Device: dev, Reason: action + ": " + detail})
	}
	err := e.s.store.InTx(ctx, func(tx store.Tx) error {
		_, err := audit.Append(ctx, tx, e.s.now(), audit.Entry{Actor: actor, Action: action, Target: target, Tenant: tid,
			Result: result, Detail: detail})
		return err
	})
	if err != nil {
		e.s.log.Error("audit write failed", "action", action, "err", err)
	}
}

// token returns the enrollment token and the device ID the client claims:
// Bearer <token>, or Basic with the device ID as user and the token as
// password.
func token(c est.Credentials) (tok, claimed string) {
	if c.BearerToken != "" {
		return c.BearerToken, ""
	}
	return c.BasicPassword, c.BasicUser
}

// deviceFromCSR is the device the CSR asks to be: its device URI SAN if it
// has one, else its CN.
func deviceFromCSR(tid string, csr *x509.CertificateRequest) (string, error) {
	for _, u := range csr.URIs {
		t, d, err := wire.ParseDeviceURI(u.String())
		if err != nil {
			return "", err
		}
		if t != tid {
			return "", fmt.Errorf("the CSR names tenant %q, not %q", t, tid)
		}
		return d, nil
	}
	if err := wire.ValidateDeviceID(csr.Subject.CommonName); err != nil {
		return "", fmt.Errorf("the CSR carries no device URI and its CN is not a device ID: %w", err)
	}
	return csr.Subject.CommonName, nil
}

func (e *estCA) Enroll(ctx context.Context, r *est.Request) ([]*x509.Certificate, error) {
	tid, err := e.tenantOf(ctx, r.Label)
	if err != nil {
		return nil, err
	}
	if viaGroup(r) {
		return e.enrollViaGroup(ctx, r)
	}
	tok, claimed := token(r.Creds)
	if tok == "" {
		return nil, est.AuthRequired("send a one-time enrollment token (Authorization: Bearer, or Basic with the device ID as user)", nil)
	}
	device, err := deviceFromCSR(tid, r.CSR)
	if err != nil {
		e.audit(ctx, "est:"+r.RemoteAddr, "est.enroll", tid, "", audit.ResultDenied, "bad CSR identity")
		return nil, est.BadRequest("the CSR does not name a device of this tenant: "+err.Error(), err)
	}
	if claimed != "" && subtle.ConstantTimeCompare([]byte(claimed), []byte(device)) != 1 {
		e.audit(ctx, "est:"+r.RemoteAddr, "est.enroll", tid, "device:"+device, audit.ResultDenied, "basic-auth user differs from the CSR's device")
		return nil, est.Forbidden("the user name must be the device ID the CSR names", nil)
	}
	// The CSR's signature was verified by the EST handler; apply the
	// issuance policy now so that a bad CSR costs the device nothing.
	checked, err := pki.CheckParsedCSR(r.CSR)
	if err != nil {
		e.audit(ctx, "est:"+r.RemoteAddr, "est.enroll", tid, "device:"+device, audit.ResultDenied, "CSR refused: "+err.Error())
		return nil, est.BadRequest("the CSR is not acceptable: "+err.Error(), err)
	}
	actor := "device:" + tid + "/" + device
	// Check the token without spending it; it is spent in the transaction
	// that records the certificate, so it is used if and only if a
	// certificate was issued (and two racing requests cannot both win).
	tk, err := e.s.Tokens.Check(ctx, e.s.store, tok, tid, device)
	if err != nil {
		return nil, e.tokenRefused(ctx, actor, tid, device, tk, err)
	}
	// One audit entry records the enrollment and the certificate, in the
	// same transaction.
	ctx = audit.WithIssue(audit.WithActor(ctx, actor), "est.enroll", "token="+tk.ID)
	if err := e.deviceUsable(ctx, tid, device, actor, "est.enroll"); err != nil {
		return nil, err
	}
	var registered func()
	ctx = withIssueHook(ctx, func(tx store.Tx) error {
		if _, err := e.s.Tokens.Redeem(ctx, tx, tok, tid, device); err != nil {
			return err
		}
		// Just-in-time registration, in the same transaction.
		var err error
		registered, err = e.s.Fleet.RegisterTx(ctx, tx, fleet.Registration{Tenant: tid, Device: device})
		return err
	})
	iss, err := e.s.PKI.Issue(ctx, pki.IssueRequest{Tenant: tid, Profile: pki.ProfileDevice, Device: device, Checked: checked})
	if err == nil && registered != nil {
		registered()
	}
	var he *hookError
	if errors.As(err, &he) {
		return nil, e.tokenRefused(ctx, actor, tid, device, tk, he.err)
	}
	if err != nil {
		e.audit(ctx, actor, "est.enroll", tid, "device:"+device, audit.ResultFailed, "issuance failed: "+err.Error())
		return nil, estIssueErr(err)
	}
	return append([]*x509.Certificate{iss.Cert}, iss.Chain...), nil
}

// deviceUsable refuses enrollment of a disabled or decommissioned device.
func (e *estCA) deviceUsable(ctx context.Context, tid, device, actor, action string) error {
	switch st, _ := e.s.Fleet.State(tid, device); st {
	case store.DeviceDisabled, store.DeviceDecommissioned:
		e.audit(ctx, actor, action, tid, "device:"+device, audit.ResultDenied, "device "+st)
		return est.Forbidden("this device is "+st, nil)
	}
	return nil
}

// tokenRefused audits a refused enrollment token and says why, without
// telling the client more than it needs.
func (e *estCA) tokenRefused(ctx context.Context, actor, tid, device string, tk *store.Token, err error) error {
	reason, msg := "invalid, expired or revoked token", "the enrollment token is invalid, expired or revoked"
	switch {
	case errors.Is(err, tenant.ErrTokenUsed):
		reason, msg = "token already used", "the enrollment token was already used"
	case errors.Is(err, tenant.ErrTokenWrongDevice):
		reason, msg = "token bound to another device", "the enrollment token is not for this device"
	case errors.Is(err, tenant.ErrTokenWrongTenant):
		reason = "token of another tenant"
	case !errors.Is(err, tenant.ErrUnauthenticated):
		return err
	}
	if tk != nil {
		reason += " (token " + tk.ID + ")"
	}
	e.audit(ctx, actor, "est.enroll", tid, "device:"+device, audit.ResultDenied, reason)
	return est.AuthRequired(msg, err)
}

func estIssueErr(err error) error {
	switch {
	case errors.Is(err, pki.ErrBadCSR), errors.Is(err, pki.ErrBadRequest):
		return est.BadRequest("the CSR is not acceptable: "+err.Error(), err)
	case errors.Is(err, pki.ErrWrongTenant):
		return est.Forbidden("the CSR names another tenant", err)
	}
	return err
}

// verifyOperational checks a client certificate chain against the tenant's
// issuing CAs (active or retired): chain, validity (with the grace window),
// client-auth usage, revocation. It returns the device ID.
func (e *estCA) verifyOperational(tid string, chain []*x509.Certificate) (string, *x509.Certificate, string, error) {
	if len(chain) == 0 {
		return "", nil, "no client certificate", est.Forbidden("simplereenroll needs the current device certificate as the TLS client certificate", nil)
	}
	if len(chain) > maxChainLen {
		chain = chain[:maxChainLen]
	}
	leaf := chain[0]
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range e.s.PKI.CAs(tid) {
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			return "", nil, "", err
		}
		if c.Kind == pki.KindRoot {
			roots.AddCert(cert)
		} else {
			inter.AddCert(cert)
		}
	}
	now := e.s.now()
	at := now
	if now.After(leaf.NotAfter) && now.Before(leaf.NotAfter.Add(e.renewGrace)) {
		at = leaf.NotAfter.Add(-time.Second)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		reason := "certificate does not verify against this tenant's CAs"
		var ie x509.CertificateInvalidError
		if errors.As(err, &ie) && ie.Reason == x509.Expired {
			reason = "certificate expired"
		}
		return "", leaf, reason, est.Forbidden("the client certificate is not a valid device certificate of this tenant ("+reason+")", err)
	}
	if r, revoked := e.s.PKI.Revocations().Lookup(leaf.SerialNumber); revoked {
		return "", leaf, "certificate revoked (" + r.Reason.String() + ")", est.Forbidden("the client certificate is revoked", nil)
	}
	var device string
	for _, u := range leaf.URIs {
		t, d, err := wire.ParseDeviceURI(u.String())
		if err == nil && t == tid {
			device = d
		}
	}
	if device == "" {
		return "", leaf, "certificate carries no device URI of this tenant", est.Forbidden("the client certificate is not a device certificate of this tenant", nil)
	}
	return device, leaf, "", nil
}

func (e *estCA) Reenroll(ctx context.Context, r *est.Request) ([]*x509.Certificate, error) {
	tid, err := e.tenantOf(ctx, r.Label)
	if err == nil && strings.Contains(r.Label, ".") {
		tid, _, _ = strings.Cut(r.Label, ".")
	}
	if err != nil {
		return nil, err
	}
	device, leaf, reason, err := e.verifyOperational(tid, r.Creds.PeerCertificates)
	if err != nil {
		target := ""
		if leaf != nil {
			target = "cert:" + pki.SerialString(leaf.SerialNumber)
		}
		e.audit(ctx, "est:"+r.RemoteAddr, "est.reenroll", tid, target, audit.ResultDenied, reason)
		return nil, err
	}
	actor := "device:" + tid + "/" + device
	if err := e.deviceUsable(ctx, tid, device, actor, "est.reenroll"); err != nil {
		return nil, err
	}
	// Attestation gates renewal (attestation.go).
	if err := e.s.renewalAttested(ctx, tid, device, r.CSR.RawSubjectPublicKeyInfo); err != nil {
		var rr errRenewalRefused
		if errors.As(err, &rr) {
			return nil, est.Forbidden(rr.Error(), nil)
		}
		return nil, err
	}
	// Renewal is rotation: the new key must never have been certified for
	// this device before.
	spki := sha256.Sum256(r.CSR.RawSubjectPublicKeyInfo)
	old, err := e.s.store.ListCerts(ctx, store.CertFilter{Tenant: tid, Device: device})
	if err != nil {
		return nil, err
	}
	for _, c := range old {
		if subtle.ConstantTimeCompare(c.SPKISHA256, spki[:]) == 1 {
			e.audit(ctx, actor, "est.reenroll", tid, "device:"+device, audit.ResultDenied, "key reuse (serial "+c.Serial+")")
			return nil, est.BadRequest("renewal needs a new key: this public key was already certified for the device", nil)
		}
	}
	ctx = audit.WithIssue(audit.WithActor(ctx, actor), "est.reenroll", "old_serial="+pki.SerialString(leaf.SerialNumber))
	iss, err := e.s.PKI.Issue(ctx, pki.IssueRequest{Tenant: tid, Profile: pki.ProfileDevice, Device: device, CSR: r.CSR.Raw})
	if err != nil {
		e.audit(ctx, actor, "est.reenroll", tid, "device:"+device, audit.ResultFailed, err.Error())
		return nil, estIssueErr(err)
	}
	return append([]*x509.Certificate{iss.Cert}, iss.Chain...), nil
}

// auditESTProtocolRefusal records an enrollment the EST layer refused
// before any credential was checked.
func (s *Server) auditESTProtocolRefusal(ev est.Event) {
	tid, _, _ := strings.Cut(ev.Label, ".")
	if wire.ValidateTenantID(tid) != nil {
		tid = ""
	}
	reason := fmt.Sprintf("HTTP %d", ev.Status)
	if ev.Err != nil {
		reason += ": " + ev.Err.Error()
	}
	ctx := context.Background()
	(&estCA{s: s}).audit(ctx, "est:"+ev.RemoteAddr, "est."+ev.Op, tid, "", audit.ResultDenied, reason)
}
