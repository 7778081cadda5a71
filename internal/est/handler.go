package est

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// Handler serves EST. Mount it at wire.ESTPrefix.
type Handler struct {
	ca           CA
	observe      Observer
	keygen       bool
	defaultLabel string
}

// Option configures a Handler.
type Option func(*Handler)

// WithObserver calls o after every request.
func WithObserver(o Observer) Option {
	return func(h *Handler) { h.observe = o }
}

// WithServerKeyGen enables serverkeygen for a CA that implements
// [ServerKeyGenerator]. It is off by default.
func WithServerKeyGen() Option {
	return func(h *Handler) { h.keygen = true }
}

// WithDefaultLabel serves the label-less paths /.well-known/est/<op> (RFC
// 7030 §3.2.2) as if they named label. Without it they answer 404.
func WithDefaultLabel(label string) Option {
	return func(h *Handler) { h.defaultLabel = label }
}

// New returns a Handler that serves EST for ca, or an error if an option
// is invalid (a default label that is not a valid label).
func New(ca CA, opts ...Option) (*Handler, error) {
	if ca == nil {
		return nil, errors.New("est: New needs a CA")
	}
	h := &Handler{ca: ca}
	for _, o := range opts {
		o(h)
	}
	if h.defaultLabel != "" {
		if err := wire.ValidateESTLabel(h.defaultLabel); err != nil {
			return nil, fmt.Errorf("est: default label: %w", err)
		}
	}
	return h, nil
}

var _ http.Handler = (*Handler)(nil)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ev := Event{RemoteAddr: r.RemoteAddr}
	ev.Status, ev.Err = h.serve(w, r, &ev)
	if h.observe != nil {
		h.observe(ev)
	}
}

// serve handles one request and returns the status it wrote and the reason
// for a failure.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, ev *Event) (int, error) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")

	label, op, err := h.route(r.URL.Path)
	if err != nil {
		return writeError(w, err)
	}
	ev.Label, ev.Op = label, op

	method := http.MethodPost
	if op == wire.ESTCACerts || op == wire.ESTCSRAttrs {
		method = http.MethodGet
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		return writeError(w, &Error{Status: http.StatusMethodNotAllowed, Message: op + " takes " + method})
	}

	ctx := r.Context()
	switch op {
	case wire.ESTCACerts:
		certs, err := h.ca.CACerts(ctx, label)
		if err != nil {
			return writeError(w, err)
		}
		return writeCerts(w, certs)

	case wire.ESTCSRAttrs:
		attrs, err := h.ca.CSRAttrs(ctx, label)
		if err != nil {
			return writeError(w, err)
		}
		if len(attrs) == 0 {
			w.WriteHeader(http.StatusNoContent)
			return http.StatusNoContent, nil
		}
		setBase64Type(w, wire.ESTContentTypeCSRAttrs)
		w.WriteHeader(http.StatusOK)
		w.Write(wire.EncodeBase64Body(attrs))
		return http.StatusOK, nil
	}

	// simpleenroll, simplereenroll, serverkeygen.
	var kg ServerKeyGenerator
	if op == wire.ESTServerKeyGen {
		var ok bool
		if kg, ok = h.ca.(ServerKeyGenerator); !ok || !h.keygen {
			return writeError(w, NotFound("serverkeygen is not enabled on this server"))
		}
	}
	req := &Request{Label: label, Creds: credentials(r), RemoteAddr: r.RemoteAddr}
	if op == wire.ESTSimpleReenroll {
		if len(req.Creds.PeerCertificates) == 0 {
			return writeError(w, Forbidden("simplereenroll requires the TLS client certificate being renewed", nil))
		}
	} else if req.Creds.empty() {
		return writeError(w, ErrAuthRequired)
	}
	if req.CSR, err = readCSR(w, r); err != nil {
		return writeError(w, err)
	}
	if op == wire.ESTSimpleReenroll {
		if err := sameIdentity(req.Creds.PeerCertificates[0], req.CSR); err != nil {
			return writeError(w, BadRequest("the CSR must keep the subject and subjectAltName of the certificate being renewed", err))
		}
	}

	var certs []*x509.Certificate
	var key []byte
	ev.Decided = true
	switch op {
	case wire.ESTSimpleEnroll:
		certs, err = h.ca.Enroll(ctx, req)
	case wire.ESTSimpleReenroll:
		certs, err = h.ca.Reenroll(ctx, req)
	default:
		certs, key, err = kg.ServerKeyGen(ctx, req)
		defer clear(key)
	}
	if err != nil {
		return writeError(w, err)
	}
	if len(certs) == 0 || certs[0] == nil {
		return writeError(w, fmt.Errorf("est: CA returned no certificate for %s", op))
	}
	if kg == nil && !samePublicKey(certs[0].PublicKey, req.CSR.PublicKey) {
		return writeError(w, fmt.Errorf("est: CA issued a certificate for a key other than the CSR's"))
	}
	if kg != nil {
		return writeKeyAndCert(w, key, certs[0])
	}
	return writeCerts(w, certs[:1])
}

// route splits an EST path into label and operation.
func (h *Handler) route(path string) (label, op string, err error) {
	rest, ok := strings.CutPrefix(path, wire.ESTPrefix)
	if !ok {
		return "", "", ErrNotFound
	}
	label, op, ok = strings.Cut(rest, "/")
	if !ok {
		label, op = h.defaultLabel, rest
		if label == "" {
			return "", "", NotFound("this server needs an EST label: /.well-known/est/<label>/<operation>")
		}
	}
	if err := wire.ValidateESTLabel(label); err != nil {
		return "", "", ErrNotFound
	}
	switch op {
	case wire.ESTCACerts, wire.ESTSimpleEnroll, wire.ESTSimpleReenroll, wire.ESTCSRAttrs, wire.ESTServerKeyGen:
		return label, op, nil
	}
	return "", "", NotFound("unknown EST operation")
}

// credentials collects what the client presented, without judging it.
func credentials(r *http.Request) Credentials {
	var c Credentials
	if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		c.BearerToken = strings.TrimSpace(token)
	} else if user, pass, ok := r.BasicAuth(); ok {
		c.BasicUser, c.BasicPassword = user, pass
	}
	if r.TLS != nil {
		c.PeerCertificates = r.TLS.PeerCertificates
	}
	return c
}

// readCSR checks the request's media type, reads the bounded body and
// decodes it.
func readCSR(w http.ResponseWriter, r *http.Request) (*x509.CertificateRequest, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != wire.ESTContentTypePKCS10 {
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Message: "Content-Type must be " + wire.ESTContentTypePKCS10}
	}
	// RFC 8951 §3.2.2 makes base64 the only encoding; accept the header
	// RFC 7030 clients send, and refuse anything claiming otherwise.
	if cte := r.Header.Get(wire.ESTTransferEncoding); cte != "" && !strings.EqualFold(strings.TrimSpace(cte), wire.ESTEncodingBase64) {
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Message: "Content-Transfer-Encoding must be base64"}
	}
	if r.ContentLength > MaxRequestBodySize {
		return nil, tooLarge()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBodySize))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooLarge()
		}
		return nil, BadRequest("could not read the request body", err)
	}
	return decodeCSR(body)
}

func tooLarge() *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Message: "request body over " + strconv.Itoa(MaxRequestBodySize) + " bytes"}
}

// decodeCSR decodes a base64 DER PKCS#10 body and verifies its signature.
func decodeCSR(body []byte) (*x509.CertificateRequest, error) {
	if len(body) > MaxRequestBodySize {
		return nil, tooLarge()
	}
	der, err := wire.DecodeBase64Body(body)
	if err != nil {
		return nil, BadRequest("the body must be a base64 DER PKCS#10 CSR", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, BadRequest("the body is not a valid PKCS#10 CSR", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, BadRequest("the CSR signature does not verify (proof of possession failed)", err)
	}
	return csr, nil
}

// sameIdentity enforces RFC 7030 §4.2.2: a re-enrollment CSR carries the
// subject and subjectAltName of the certificate being renewed.
func sameIdentity(cert *x509.Certificate, csr *x509.CertificateRequest) error {
	if !bytes.Equal(cert.RawSubject, csr.RawSubject) && cert.Subject.String() != csr.Subject.String() {
		return errors.New("subject differs from the certificate being renewed")
	}
	if !slices.Equal(sorted(cert.DNSNames), sorted(csr.DNSNames)) ||
		!slices.Equal(sorted(cert.EmailAddresses), sorted(csr.EmailAddresses)) {
		return errors.New("subjectAltName differs from the certificate being renewed")
	}
	var a, b []string
	for _, ip := range cert.IPAddresses {
		a = append(a, ip.String())
	}
	for _, ip := range csr.IPAddresses {
		b = append(b, ip.String())
	}
	for _, u := range cert.URIs {
		a = append(a, "uri:"+u.String())
	}
	for _, u := range csr.URIs {
		b = append(b, "uri:"+u.String())
	}
	if !slices.Equal(sorted(a), sorted(b)) {
		return errors.New("subjectAltName differs from the certificate being renewed")
	}
	return nil
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func setBase64Type(w http.ResponseWriter, contentType string) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set(wire.ESTTransferEncoding, wire.ESTEncodingBase64)
}

func writeCerts(w http.ResponseWriter, certs []*x509.Certificate) (int, error) {
	der, err := wire.EncodeCertsOnly(certs)
	if err != nil {
		return writeError(w, fmt.Errorf("est: encoding certs-only: %w", err))
	}
	setBase64Type(w, wire.ESTContentTypeCertsOnly)
	w.WriteHeader(http.StatusOK)
	w.Write(wire.EncodeBase64Body(der))
	return http.StatusOK, nil
}

// writeKeyAndCert writes the multipart/mixed serverkeygen response of RFC
// 7030 §4.4.2: the PKCS#8 key part, then the certificate part.
func writeKeyAndCert(w http.ResponseWriter, key []byte, cert *x509.Certificate) (int, error) {
	p7, err := wire.EncodeCertsOnly([]*x509.Certificate{cert})
	if err != nil {
		return writeError(w, fmt.Errorf("est: encoding certs-only: %w", err))
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, part := range []struct {
		ctype string
		der   []byte
	}{{wire.ESTContentTypePKCS8, key}, {wire.ESTContentTypeCertsOnly, p7}} {
		pw, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":           {part.ctype},
			wire.ESTTransferEncoding: {wire.ESTEncodingBase64},
		})
		if err != nil {
			return writeError(w, err)
		}
		enc := wire.EncodeBase64Body(part.der)
		pw.Write(enc)
		clear(enc)
	}
	if err := mw.Close(); err != nil {
		return writeError(w, err)
	}
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	w.Write(buf.Bytes())
	clear(buf.Bytes())
	return http.StatusOK, nil
}

// writeError writes err as a text/plain response and returns the status
// and err. Only an *Error's safe message is sent.
func writeError(w http.ResponseWriter, err error) (int, error) {
	e, ok := errors.AsType[*Error](err)
	if !ok {
		e = &Error{Status: http.StatusInternalServerError, Message: "internal error"}
	}
	status := e.Status
	if status < 200 || status > 599 || status == http.StatusOK {
		status = http.StatusInternalServerError
	}
	msg := e.Message
	if msg == "" || !ok {
		msg = http.StatusText(status)
	}
	h := w.Header()
	if status == http.StatusUnauthorized {
		h.Add("WWW-Authenticate", `Basic realm="ward-est"`)
		h.Add("WWW-Authenticate", `Bearer realm="ward-est"`)
	}
	retry := e.RetryAfter
	if status == http.StatusAccepted && retry <= 0 {
		retry = DefaultRetryAfter
	}
	if retry > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
	return status, err
}
