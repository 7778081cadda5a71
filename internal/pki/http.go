package pki

import (
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Handler serves, over plain HTTP as relying parties expect:
//
//	GET  /crl/<caID>.crl      the CA's current CRL (application/pkix-crl)
//	GET  /ca/<caID>.crt       the CA certificate (application/pkix-cert)
//	GET  /ocsp/<caID>/<b64>   an OCSP request, base64 in the path (RFC 6960 A.1)
//	POST /ocsp/<caID>         an OCSP request body (application/ocsp-request)
//
// The responses are signed, so no TLS is needed. Mount it at the root of
// the CRL/OCSP listener.
func (a *Authority) Handler() http.Handler {
	return http.HandlerFunc(a.serveHTTP)
}

func (a *Authority) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(p, "/crl/"):
		a.serveCRL(w, r, strings.TrimPrefix(p, "/crl/"))
	case strings.HasPrefix(p, "/ca/"):
		a.serveCACert(w, r, strings.TrimPrefix(p, "/ca/"))
	case strings.HasPrefix(p, "/ocsp/"):
		a.serveOCSP(w, r, strings.TrimPrefix(p, "/ocsp/"))
	default:
		http.NotFound(w, r)
	}
}

func (a *Authority) serveCRL(w http.ResponseWriter, r *http.Request, name string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	id, ok := strings.CutSuffix(name, ".crl")
	st, found := a.ca(id)
	if !ok || !found {
		http.NotFound(w, r)
		return
	}
	snap := st.crl.Load()
	if snap == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Header().Set("Last-Modified", snap.thisUpdate.UTC().Format(http.TimeFormat))
	w.Header().Set("Expires", snap.nextUpdate.UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Length", strconv.Itoa(len(snap.der)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(snap.der)
	}
}

func (a *Authority) serveCACert(w http.ResponseWriter, r *http.Request, name string) {
	id, ok := strings.CutSuffix(name, ".crt")
	st, found := a.ca(id)
	if !ok || !found || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	_, _ = w.Write(st.rec.CertDER)
}

func (a *Authority) serveOCSP(w http.ResponseWriter, r *http.Request, rest string) {
	id, b64, _ := strings.Cut(rest, "/")
	st, found := a.ca(id)
	if !found || st.ocsp == nil {
		http.NotFound(w, r)
		return
	}
	var der []byte
	switch r.Method {
	case http.MethodGet:
		if len(b64) > 2*MaxOCSPRequestSize {
			writeOCSP(w, ocsp.MalformedRequestErrorResponse, nil, a.cfg.Now())
			return
		}
		// net/http has already unescaped r.URL.Path.
		_, b64, _ = strings.Cut(strings.TrimPrefix(r.URL.Path, "/ocsp/"), "/")
		var err error
		if der, err = decodeBase64Any(b64); err != nil {
			writeOCSP(w, ocsp.MalformedRequestErrorResponse, nil, a.cfg.Now())
			return
		}
	case http.MethodPost:
		if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/ocsp-request" {
			http.Error(w, "Content-Type must be application/ocsp-request", http.StatusUnsupportedMediaType)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxOCSPRequestSize))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				http.Error(w, "OCSP request too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "cannot read request", http.StatusBadRequest)
			return
		}
		der = body
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if e, ok := st.ocsp.cached(der, a.cfg.Now()); ok {
		writeOCSP(w, e.der, e, a.cfg.Now())
		return
	}
	req, err := ParseOCSPRequest(der)
	if err != nil {
		writeOCSP(w, ocsp.MalformedRequestErrorResponse, nil, a.cfg.Now())
		return
	}
	resp, entry, err := a.respondOCSP(r.Context(), st, der, req)
	if err != nil {
		a.log.Error("pki: OCSP", "ca", id, "err", err)
		writeOCSP(w, ocsp.InternalErrorErrorResponse, nil, a.cfg.Now())
		return
	}
	writeOCSP(w, resp, entry, a.cfg.Now())
}

// writeOCSP writes a response; entry is set for cacheable responses (no
// nonce), which HTTP caches may keep until the response's nextUpdate.
func writeOCSP(w http.ResponseWriter, der []byte, entry *ocspEntry, now time.Time) {
	h := w.Header()
	h.Set("Content-Type", "application/ocsp-response")
	h.Set("Content-Length", strconv.Itoa(len(der)))
	if entry != nil {
		if age := int(entry.nextUpdate.Sub(now) / time.Second); age > 0 {
			h.Set("Cache-Control", "max-age="+strconv.Itoa(age)+", public, no-transform, must-revalidate")
		}
	} else {
		h.Set("Cache-Control", "no-store")
	}
	_, _ = w.Write(der)
}

// decodeBase64Any accepts standard and URL-safe base64, padded or not:
// clients differ.
func decodeBase64Any(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}
