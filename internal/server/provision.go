package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/jointoken"
	"github.com/wardiot/ward/internal/provision/symkey"
	"github.com/wardiot/ward/internal/provision/tpmek"
	"github.com/wardiot/ward/internal/provision/x509pop"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/provisionsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/wire"
)

type provEvents struct{ m *monitor.Monitor }

func (e provEvents) SecurityEvent(ctx context.Context, ev provision.SecurityEvent) {
	typ := monitor.EnrollRefused
	if ev.Reason == provision.ReasonAlreadyProvisioned {
		typ = monitor.SecondOnboarding
	}
	e.m.Emit(monitor.Event{Type: typ, Tenant: ev.Tenant, Device: ev.DeviceID, Remote: ev.RemoteAddr,
		Reason: string(ev.Reason), Detail: "group=" + ev.Group + " mechanism=" + string(ev.Mechanism), Time: ev.Time})
}

type provAuditor struct{ s *Server }

func (a provAuditor) Audit(ctx context.Context, e audit.Entry) error {
	return a.s.store.InTx(ctx, func(tx store.Tx) error {
		_, err := audit.Append(ctx, tx, a.s.now(), e)
		return err
	})
}

// openProvisioning builds the enrollment groups' provisioner over the SQL
// store.
func (s *Server) openProvisioning() error {
	db, ok := s.store.(*sqlstore.DB)
	if !ok {
		return errors.New("provisioning needs the SQL store")
	}
	s.provStore = provisionsql.New(db.SQL(), db.SQLDialect())
	sealers := func(ctx context.Context, tenantID string) (provision.Sealer, error) {
		return s.Tenants.Sealer(ctx, tenantID)
	}
	p, err := provision.New(provision.Config{
		Store: s.provStore,
		Authenticators: map[provision.Mechanism]provision.Authenticator{
			provision.MechanismX509:      x509pop.New(s.now),
			provision.MechanismTPM:       tpmek.New(s.provStore, sealers, s.now),
			provision.MechanismSymmetric: symkey.New(s.provStore, sealers, s.now),
			provision.MechanismToken:     jointoken.New(s.provStore, s.now),
		},
		Sealers: sealers,
		Events:  provEvents{m: s.Monitor},
		Auditor: provAuditor{s: s},
		Now:     s.now,
	})
	if err != nil {
		return err
	}
	s.Provisioner = p
	return nil
}

// viaGroup reports whether an EST enrollment is for the enrollment groups
// rather than a tenant's one-time token: a group label, a bootstrap
// certificate, or a group credential.
func viaGroup(r *est.Request) bool {
	if strings.Contains(r.Label, ".") || len(r.Creds.PeerCertificates) > 0 {
		return true
	}
	t := r.Creds.BearerToken
	return strings.HasPrefix(t, wire.SymKeyTokenPrefix) || strings.HasPrefix(t, wire.TPMBearerPrefix) || strings.HasPrefix(t, wire.GroupTokenPrefix)
}

// enrollViaGroup runs zero-touch provisioning and issues the certificate
// the group's template asks for.
func (e *estCA) enrollViaGroup(ctx context.Context, r *est.Request) ([]*x509.Certificate, error) {
	en, err := e.s.Provisioner.Enroll(ctx, r.Label, &provision.Request{CSR: r.CSR, PeerCertificates: r.Creds.PeerCertificates,
		BearerToken: r.Creds.BearerToken, RemoteAddr: r.RemoteAddr})
	if err != nil {
		if provision.ReasonOf(err) != "" {
			// The device learns nothing about which check failed; the
			// event and audit entry (written by the provisioner) do.
			return nil, est.Forbidden("enrollment refused", err)
		}
		return nil, err
	}
	actor := "device:" + en.Tenant + "/" + en.DeviceID
	if err := e.deviceUsable(ctx, en.Tenant, en.DeviceID, actor, "est.enroll"); err != nil {
		return nil, err
	}
	checked, err := e.s.checkCSRFor(r.CSR)
	if err != nil {
		return nil, est.BadRequest("the CSR is not acceptable: "+err.Error(), err)
	}
	profile, validity := e.s.templateProfile(en.Template)
	var registered func()
	ctx = audit.WithIssue(audit.WithActor(ctx, actor), "est.enroll", "group="+en.Group+" mechanism="+string(en.Mechanism))
	ctx = withIssueHook(ctx, func(tx store.Tx) error {
		var err error
		registered, err = e.s.Fleet.RegisterTx(ctx, tx, fleetRegistration(en))
		return err
	})
	iss, err := e.s.PKI.Issue(ctx, issueRequest(en, profile, validity, checked))
	if err != nil {
		e.audit(ctx, actor, "est.enroll", en.Tenant, "device:"+en.DeviceID, audit.ResultFailed, "issuance failed: "+err.Error())
		return nil, estIssueErr(err)
	}
	if registered != nil {
		registered()
	}
	e.s.applyTemplate(ctx, en)
	return append([]*x509.Certificate{iss.Cert}, iss.Chain...), nil
}

// applyTemplate gives a newly provisioned device its template's policy and
// twin defaults. Failures are logged: the device is enrolled either way,
// and an operator can apply them by hand.
func (s *Server) applyTemplate(ctx context.Context, en *provision.Enrollment) {
	if en.Template.Policy != "" {
		if err := s.AssignPolicy(ctx, "system", en.Tenant, "device", en.DeviceID, en.Template.Policy); err != nil {
			s.log.Warn("template policy not applied", "tenant", en.Tenant, "device", en.DeviceID, "err", err)
		}
	}
	if len(en.Template.Twin) > 0 {
		if _, err := s.PatchDesired(ctx, en.Tenant, en.DeviceID, "", en.Template.Twin, twinAny); err != nil {
			s.log.Warn("template twin defaults not applied", "tenant", en.Tenant, "device", en.DeviceID, "err", err)
		}
	}
}

// maxChallengeBody bounds the TPM challenge request.
const maxChallengeBody = wire.MaxTPMChallengeRequestSize

// serveProvisionChallenge is round one of TPM enrollment:
// POST /.well-known/ward/provision/<label>/tpm/challenge.
func (s *Server) serveProvisionChallenge(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, wire.ProvisionPrefix)
	label, mech, ok := strings.Cut(strings.TrimSuffix(rest, "/challenge"), "/")
	if !ok || !strings.HasSuffix(rest, "/challenge") || wire.ValidateESTLabel(label) != nil {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(maxChallengeBody)))
	if err != nil {
		http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
		return
	}
	out, err := s.Provisioner.Challenge(r.Context(), label, provision.Mechanism(mech), body, r.RemoteAddr)
	if err != nil {
		if provision.ReasonOf(err) != "" {
			http.Error(w, "enrollment refused", http.StatusForbidden)
			return
		}
		s.log.Error("provisioning challenge", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(out)
}

// GroupSpec is what an operator gives to create a group.
type GroupSpec struct {
	Name        string
	Mechanism   string
	X509CAs     []byte // PEM, for x509
	IDFrom      string // x509: "cn", "serial", "san-dns", "san-uri"
	IDPrefix    string // x509: prefix to strip
	EKRoots     []byte // PEM, for tpm
	AllowedEKs  []string
	Template    provision.Template
	Reprovision bool
	WebhookURL  string
}

// CreateGroup creates an enrollment group. For a symmetric group it
// returns the group key, shown once (the factory derives device keys from
// it; the server keeps it sealed).
func (s *Server) CreateGroup(ctx context.Context, actor, tenantID string, spec GroupSpec) (*provision.Group, []byte, error) {
	g := &provision.Group{ID: provision.NewGroupID(), Tenant: tenantID, Name: spec.Name, Mechanism: provision.Mechanism(spec.Mechanism),
		Template: spec.Template, Reprovision: spec.Reprovision, Enabled: true, CreatedAt: s.now().UTC()}
	var secret []byte
	switch g.Mechanism {
	case provision.MechanismX509:
		roots, err := pemBlocks(spec.X509CAs)
		if err != nil || len(roots) == 0 {
			return nil, nil, errors.New("an x509 group needs the manufacturer CA certificates (PEM)")
		}
		from := spec.IDFrom
		if from == "" {
			from = "cn"
		}
		g.X509 = &provision.X509Config{Roots: roots, DeviceID: provision.IDRule{From: from, StripPrefix: spec.IDPrefix}}
	case provision.MechanismTPM:
		roots, err := pemBlocks(spec.EKRoots)
		if err != nil {
			return nil, nil, err
		}
		g.TPM = &provision.TPMConfig{EKRoots: roots, AllowedEKs: spec.AllowedEKs}
	case provision.MechanismSymmetric:
		sealer, err := s.Tenants.Sealer(ctx, tenantID)
		if err != nil {
			return nil, nil, err
		}
		key, sealed, err := symkey.NewGroupKey(sealer, g.ID)
		if err != nil {
			return nil, nil, err
		}
		g.Symmetric = &provision.SymmetricConfig{SealedKey: sealed}
		secret = key
	case provision.MechanismToken:
		g.Token = &provision.TokenConfig{}
	default:
		return nil, nil, fmt.Errorf("unknown mechanism %q (want x509, tpm, symmetric or token)", spec.Mechanism)
	}
	if spec.WebhookURL != "" {
		sealer, err := s.Tenants.Sealer(ctx, tenantID)
		if err != nil {
			return nil, nil, err
		}
		ws := provision.NewWebhookSecret()
		sealed, err := sealer.Seal(ws, provision.WebhookSecretAAD(g.ID))
		if err != nil {
			return nil, nil, err
		}
		g.Webhook = &provision.Webhook{URL: spec.WebhookURL, SealedSecret: sealed}
		if secret == nil {
			secret = ws
		}
	}
	if err := provision.ValidateGroup(g); err != nil {
		return nil, nil, err
	}
	if _, err := s.provStore.GetGroup(ctx, tenantID, spec.Name); err == nil {
		return nil, nil, fmt.Errorf("group %q already exists: %w", spec.Name, store.ErrConflict)
	}
	if err := s.provStore.PutGroup(ctx, g); err != nil {
		return nil, nil, err
	}
	if err := (provAuditor{s}).Audit(ctx, audit.Entry{Actor: actor, Action: "group.create", Target: "group:" + g.Name, Tenant: tenantID,
		Detail: "mechanism=" + string(g.Mechanism)}); err != nil {
		return nil, nil, err
	}
	return g, secret, nil
}

// DeriveGroupDeviceKey returns the device key of a symmetric group for
// the factory line: HMAC-SHA256(groupKey, deviceID).
func (s *Server) DeriveGroupDeviceKey(ctx context.Context, actor, tenantID, group, device string) ([]byte, error) {
	if err := wire.ValidateDeviceID(device); err != nil {
		return nil, err
	}
	g, err := s.provStore.GetGroup(ctx, tenantID, group)
	if err != nil {
		return nil, err
	}
	if g.Symmetric == nil {
		return nil, errors.New("not a symmetric-key group")
	}
	sealer, err := s.Tenants.Sealer(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	key, err := sealer.Open(g.Symmetric.SealedKey, symkey.GroupKeyAAD(g.ID))
	if err != nil {
		return nil, err
	}
	defer clear(key)
	if err := (provAuditor{s}).Audit(ctx, audit.Entry{Actor: actor, Action: "group.derive_key", Target: "device:" + device, Tenant: tenantID,
		Detail: "group=" + group}); err != nil {
		return nil, err
	}
	return symkey.DeriveDeviceKey(key, device), nil
}

// MintGroupToken mints a one-time enrollment token of a token group.
func (s *Server) MintGroupToken(ctx context.Context, actor, tenantID, group, device string, ttl time.Duration) (string, error) {
	g, err := s.provStore.GetGroup(ctx, tenantID, group)
	if err != nil {
		return "", err
	}
	tok, _, err := jointoken.Mint(ctx, s.provStore, s.now(), g, device, ttl)
	if err != nil {
		return "", err
	}
	return tok, (provAuditor{s}).Audit(ctx, audit.Entry{Actor: actor, Action: "group.token", Target: "device:" + device, Tenant: tenantID, Detail: "group=" + group})
}

func pemBlocks(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, err
		}
		out = append(out, blk.Bytes)
	}
	return out, nil
}

// twinAny applies a twin patch whatever the current version.
const twinAny = ^uint64(0)

func (s *Server) checkCSRFor(csr *x509.CertificateRequest) (*pki.CheckedCSR, error) {
	return pki.CheckParsedCSR(csr)
}

// templateProfile maps a template's certificate profile and lifetime.
func (s *Server) templateProfile(t provision.Template) (pki.Profile, time.Duration) {
	p := pki.ProfileDevice
	if t.Profile != "" {
		if q, err := pki.ParseProfile(t.Profile); err == nil && q != pki.ProfileServer {
			p = q
		}
	}
	return p, t.Lifetime
}

func fleetRegistration(en *provision.Enrollment) fleet.Registration {
	return fleet.Registration{Tenant: en.Tenant, Device: en.DeviceID, Group: en.Group, Tags: en.Template.Tags}
}

func issueRequest(en *provision.Enrollment, p pki.Profile, validity time.Duration, c *pki.CheckedCSR) pki.IssueRequest {
	return pki.IssueRequest{Tenant: en.Tenant, Profile: p, Device: en.DeviceID, Validity: validity, Checked: c}
}

// ListGroups lists a tenant's enrollment groups.
func (s *Server) ListGroups(ctx context.Context, tenantID string) ([]*provision.Group, error) {
	return s.provStore.ListGroups(ctx, tenantID)
}

// GetGroup returns an enrollment group.
func (s *Server) GetGroup(ctx context.Context, tenantID, name string) (*provision.Group, error) {
	g, err := s.provStore.GetGroup(ctx, tenantID, name)
	if errors.Is(err, provision.ErrNotFound) {
		return nil, fmt.Errorf("group %s: %w", name, store.ErrNotFound)
	}
	return g, err
}

// DeleteGroup deletes an enrollment group and its one-time tokens.
func (s *Server) DeleteGroup(ctx context.Context, actor, tenantID, name string) error {
	if err := s.provStore.DeleteGroup(ctx, tenantID, name); err != nil {
		if errors.Is(err, provision.ErrNotFound) {
			return fmt.Errorf("group %s: %w", name, store.ErrNotFound)
		}
		return err
	}
	return (provAuditor{s}).Audit(ctx, audit.Entry{Actor: actor, Action: "group.delete", Target: "group:" + name, Tenant: tenantID})
}

// RegisterClaimable puts a device in a maker's pool tenant and returns its
// claim code (shown once; stored only as a hash).
func (s *Server) RegisterClaimable(ctx context.Context, actor, pool, group, device string) (string, error) {
	return s.Provisioner.RegisterClaimable(ctx, actor, pool, group, device)
}

// Claim moves a pooled device to tenant by its claim code.
func (s *Server) Claim(ctx context.Context, actor, tenantID, code string) (*provision.Device, error) {
	return s.Provisioner.Claim(ctx, actor, tenantID, code)
}

// CreateGroupFromAPI adapts the API request to CreateGroup.
func (s *Server) CreateGroupFromAPI(ctx context.Context, actor, tenantID string, req api.CreateGroupRequest) (*provision.Group, []byte, error) {
	g, secret, err := s.CreateGroup(ctx, actor, tenantID, GroupSpec{Name: req.Name, Mechanism: req.Mechanism, X509CAs: []byte(req.X509CAPEM),
		IDFrom: req.IDFrom, IDPrefix: req.IDPrefix, EKRoots: []byte(req.EKRootsPEM), AllowedEKs: req.AllowedEKs, Template: req.Template,
		Reprovision: req.Reprovision, WebhookURL: req.WebhookURL})
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return nil, nil, api.Invalid(err)
	}
	return g, secret, err
}
