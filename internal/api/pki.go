package api

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

func (a *API) pkiRoutes() {
	a.Handle("GET /api/v1/tenants/{tenant}/ca", tenant.PermRead, ScopeTenant, "The tenant's CA certificates (issuing CA first, then root)", a.caChain)
	a.Handle("POST /api/v1/tenants/{tenant}/ca/root-offline", tenant.PermAdmin, ScopeTenant, "Export the root CA key and remove it from the server", a.rootOffline)
	a.Handle("POST /api/v1/tenants/{tenant}/ca/issuing", tenant.PermAdmin, ScopeTenant, "Create a new issuing CA (needs the offline root key)", a.newIssuing)
	a.Handle("POST /api/v1/tenants/{tenant}/certs", tenant.PermWrite, ScopeTenant, "Issue a certificate from a CSR", a.issueCert)
	a.Handle("GET /api/v1/tenants/{tenant}/certs", tenant.PermRead, ScopeTenant, "List certificates", a.listCerts)
	a.Handle("GET /api/v1/tenants/{tenant}/certs/{serial}", tenant.PermRead, ScopeTenant, "Show a certificate", a.getCert)
	a.Handle("POST /api/v1/tenants/{tenant}/certs/{serial}/revoke", tenant.PermWrite, ScopeTenant, "Revoke a certificate", a.revokeCert)
}

// CAInfo describes one CA.
type CAInfo struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Status   string    `json:"status"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	CRL      string    `json:"crl_url,omitempty"`
	OCSP     string    `json:"ocsp_url,omitempty"`
	PEM      string    `json:"pem"`
}

// CAChain is the body of GET /api/v1/tenants/{tenant}/ca.
type CAChain struct {
	CAs []CAInfo `json:"cas"`
	// ChainPEM is the active issuing CA followed by the root, ready for
	// `openssl verify -untrusted`.
	ChainPEM string `json:"chain_pem"`
}

func pemCert(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func (a *API) caChain(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	tid := r.PathValue("tenant")
	if _, err := a.d.Store.GetTenant(r.Context(), tid); err != nil {
		return err
	}
	cas := a.d.PKI.CAs(tid)
	out := CAChain{}
	var issuing, root string
	for _, c := range cas {
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			return err
		}
		info := CAInfo{ID: c.ID, Kind: string(c.Kind), Status: string(c.Status), Subject: cert.Subject.String(),
			NotAfter: cert.NotAfter, PEM: pemCert(c.CertDER)}
		if c.Kind == pki.KindIssuing {
			info.CRL, info.OCSP = a.d.PKI.CRLURL(c.ID), a.d.PKI.OCSPURL(c.ID)
			if c.Status == pki.CAActive {
				issuing = info.PEM
			}
		} else {
			root = info.PEM
		}
		out.CAs = append(out.CAs, info)
	}
	out.ChainPEM = issuing + root
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// RootOfflineRequest confirms the export: the key is shown exactly once.
type RootOfflineRequest struct {
	Confirm bool `json:"confirm"`
}

// RootOfflineResponse carries the exported root key. Store it offline.
type RootOfflineResponse struct {
	RootKeyPEM string `json:"root_key_pem"`
	Note       string `json:"note"`
}

func (a *API) rootOffline(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req RootOfflineRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if !req.Confirm {
		return Invalid(errors.New("set confirm: the root key leaves the server and is shown only in this response"))
	}
	tid := r.PathValue("tenant")
	key, err := a.d.PKI.ExportRootKey(r.Context(), tid)
	if err != nil {
		return pkiErr(err)
	}
	km, err := a.keys(r, tid)
	if err != nil {
		return err
	}
	if err := a.d.PKI.RootOffline(r.Context(), tid, km, key); err != nil {
		return pkiErr(err)
	}
	WriteJSON(w, http.StatusOK, RootOfflineResponse{RootKeyPEM: string(key),
		Note: "The root CA key is no longer on the server. Keep this key offline: a new issuing CA needs it."})
	return nil
}

// keys returns the tenant's CA key manager (file mode: sealed with its
// data key).
func (a *API) keys(r *http.Request, tid string) (pki.KeyManager, error) {
	if a.d.CAKeys != nil {
		return a.d.CAKeys(r.Context(), tid)
	}
	sealer, err := a.d.Tenants.Sealer(r.Context(), tid)
	if err != nil {
		return nil, err
	}
	return pki.NewFileKeyManager(sealer), nil
}

// NewIssuingRequest is the body of POST /api/v1/tenants/{tenant}/ca/issuing.
type NewIssuingRequest struct {
	Algorithm  string `json:"algorithm,omitempty"`
	RootKeyPEM string `json:"root_key_pem,omitempty"` // required when the root is offline
}

func (a *API) newIssuing(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req NewIssuingRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	tid := r.PathValue("tenant")
	alg, err := pki.ParseAlgorithm(req.Algorithm)
	if err != nil {
		return Invalid(err)
	}
	km, err := a.keys(r, tid)
	if err != nil {
		return err
	}
	var ca pki.CA
	if req.RootKeyPEM != "" {
		k, err := pki.ParseKeyPEM([]byte(req.RootKeyPEM))
		if err != nil {
			return Invalid(errors.New("root_key_pem is not a PEM private key"))
		}
		ca, err = a.d.PKI.NewIssuingCA(r.Context(), tid, alg, km, k)
		if err != nil {
			return pkiErr(err)
		}
	} else {
		ca, err = a.d.PKI.NewIssuingCA(r.Context(), tid, alg, km, nil)
		if err != nil {
			return pkiErr(err)
		}
	}
	WriteJSON(w, http.StatusCreated, CAInfo{ID: ca.ID, Kind: string(ca.Kind), Status: string(ca.Status), PEM: pemCert(ca.CertDER),
		CRL: a.d.PKI.CRLURL(ca.ID), OCSP: a.d.PKI.OCSPURL(ca.ID)})
	return nil
}

// IssueCertRequest is the body of POST /api/v1/tenants/{tenant}/certs.
type IssueCertRequest struct {
	Device   string   `json:"device,omitempty"`
	CSR      string   `json:"csr"` // PEM
	Profile  string   `json:"profile,omitempty"`
	Validity string   `json:"validity,omitempty"` // Go duration; shortens the profile's
	DNSNames []string `json:"dns_names,omitempty"`
}

// Cert is the JSON form of an issued certificate.
type Cert struct {
	Serial     string     `json:"serial"`
	Device     string     `json:"device,omitempty"`
	CAID       string     `json:"ca_id"`
	Profile    string     `json:"profile"`
	SPKISHA256 string     `json:"spki_sha256"`
	NotBefore  time.Time  `json:"not_before"`
	NotAfter   time.Time  `json:"not_after"`
	Status     string     `json:"status"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	PEM        string     `json:"pem,omitempty"`
	ChainPEM   string     `json:"chain_pem,omitempty"`
}

func certJSON(c *store.Cert, withPEM bool) Cert {
	out := Cert{Serial: c.Serial, Device: c.Device, CAID: c.CAID, Profile: c.Profile, SPKISHA256: hex.EncodeToString(c.SPKISHA256),
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, Status: c.Status, RevokedAt: opt(c.RevokedAt)}
	if c.Status == "revoked" {
		out.Reason = pki.Reason(c.Reason).String()
	}
	if withPEM {
		out.PEM = pemCert(c.CertDER)
	}
	return out
}

// maxCSRPEM bounds the CSR field before it is even decoded.
const maxCSRPEM = 32 << 10

func (a *API) issueCert(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req IssueCertRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	tid := r.PathValue("tenant")
	if _, err := a.d.Store.GetTenant(r.Context(), tid); err != nil {
		return err
	}
	if len(req.CSR) > maxCSRPEM {
		return &Error{Status: http.StatusRequestEntityTooLarge, Title: "CSR too large", Detail: fmt.Sprintf("the CSR is over %d bytes", maxCSRPEM)}
	}
	b, _ := pem.Decode([]byte(req.CSR))
	if b == nil || b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
		return Invalid(errors.New("csr must be a PEM CERTIFICATE REQUEST"))
	}
	profile, err := pki.ParseProfile(req.Profile)
	if err != nil {
		return Invalid(err)
	}
	var validity time.Duration
	if req.Validity != "" {
		if validity, err = time.ParseDuration(req.Validity); err != nil || validity <= 0 {
			return Invalid(errors.New("validity must be a positive duration such as 720h"))
		}
	}
	if req.Device != "" {
		if err := wire.ValidateDeviceID(req.Device); err != nil {
			return err
		}
	}
	iss, err := a.d.PKI.Issue(r.Context(), pki.IssueRequest{Tenant: tid, Profile: profile, Device: req.Device, CSR: b.Bytes,
		Validity: validity, DNSNames: req.DNSNames})
	if err != nil {
		return pkiErr(err)
	}
	out := certJSON(certToStore(iss.Record), true)
	for _, c := range iss.Chain {
		out.ChainPEM += pemCert(c.Raw)
	}
	WriteJSON(w, http.StatusCreated, out)
	return nil
}

func certToStore(c pki.CertRecord) *store.Cert {
	return &store.Cert{Serial: c.Serial, Tenant: c.Tenant, Device: c.Device, CAID: c.CAID, Profile: c.Profile,
		SPKISHA256: c.SPKISHA256, NotBefore: c.NotBefore, NotAfter: c.NotAfter, Status: string(c.Status),
		RevokedAt: c.RevokedAt, Reason: int(c.Reason), CertDER: c.CertDER}
}

func (a *API) listCerts(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	q := r.URL.Query()
	f := store.CertFilter{Tenant: r.PathValue("tenant"), Device: q.Get("device"), Status: q.Get("status"), Limit: 1000}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 10000 {
			return Invalid(errors.New("limit must be between 1 and 10000"))
		}
		f.Limit = n
	}
	cs, err := a.d.Store.ListCerts(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]Cert, 0, len(cs))
	for _, c := range cs {
		out = append(out, certJSON(c, false))
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// certOf loads a certificate of the path's tenant; another tenant's serial
// is "not found", never "forbidden", so serials leak nothing.
func (a *API) certOf(r *http.Request) (*store.Cert, error) {
	c, err := a.d.Store.GetCert(r.Context(), r.PathValue("serial"))
	if err != nil {
		return nil, err
	}
	if c.Tenant != r.PathValue("tenant") {
		return nil, fmt.Errorf("certificate %s: %w", r.PathValue("serial"), store.ErrNotFound)
	}
	return c, nil
}

func (a *API) getCert(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	c, err := a.certOf(r)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, certJSON(c, true))
	return nil
}

// RevokeRequest is the body of POST .../certs/{serial}/revoke.
type RevokeRequest struct {
	Reason string `json:"reason,omitempty"` // RFC 5280 name, e.g. keyCompromise
}

func (a *API) revokeCert(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req RevokeRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	reason, err := pki.ParseReason(req.Reason)
	if err != nil {
		return Invalid(err)
	}
	if _, err := a.certOf(r); err != nil {
		return err
	}
	rec, err := a.d.PKI.Revoke(r.Context(), r.PathValue("serial"), reason)
	if errors.Is(err, pki.ErrAlreadyRevoked) {
		return &Error{Status: http.StatusConflict, Title: "Conflict", Detail: "the certificate is already revoked (" + rec.Reason.String() + ")"}
	}
	if err != nil {
		return pkiErr(err)
	}
	WriteJSON(w, http.StatusOK, certJSON(certToStore(rec), false))
	return nil
}

// pkiErr maps the authority's sentinel errors to safe responses.
func pkiErr(err error) error {
	switch {
	case errors.Is(err, pki.ErrBadCSR), errors.Is(err, pki.ErrBadRequest), errors.Is(err, pki.ErrBadReason),
		errors.Is(err, pki.ErrUnsupportedAlgorithm):
		return Invalid(err)
	case errors.Is(err, pki.ErrWrongTenant):
		return &Error{Status: http.StatusForbidden, Title: "Forbidden", Detail: err.Error()}
	case errors.Is(err, pki.ErrNoCA), errors.Is(err, pki.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Title: "Not found", Detail: err.Error()}
	case errors.Is(err, pki.ErrNotExportable), errors.Is(err, pki.ErrExists):
		return &Error{Status: http.StatusConflict, Title: "Conflict", Detail: err.Error()}
	}
	return err
}
