package server

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/wire"
)

// Attestation over HTTPS, for devices that do not keep an MQTT session:
//
//	POST /api/device/v1/attest/challenge  -> wire.AttestChallenge (JSON)
//	POST /api/device/v1/attest/evidence   <- wire.AttestEvidence, -> wire.AttestVerdict
//
// The device authenticates with its operational certificate (mutual TLS on
// the API listener), verified exactly as for EST re-enrollment: chain to
// its tenant's CAs, validity, client-auth usage, revocation.
const deviceAttestPrefix = "/api/device/v1/attest/"

func (s *Server) serveDeviceAttest(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		http.Error(w, "attestation over HTTPS needs the device certificate as the TLS client certificate", http.StatusUnauthorized)
		return
	}
	tenant := ""
	for _, u := range r.TLS.PeerCertificates[0].URIs {
		if t, _, err := wire.ParseDeviceURI(u.String()); err == nil {
			tenant = t
		}
	}
	if tenant == "" {
		http.Error(w, "not a device certificate", http.StatusForbidden)
		return
	}
	device, _, reason, err := (&estCA{s: s}).verifyOperational(tenant, r.TLS.PeerCertificates)
	if err != nil {
		http.Error(w, "the client certificate is not a valid device certificate ("+reason+")", http.StatusForbidden)
		return
	}
	ctx := r.Context()
	dev, err := s.attestDevice(ctx, tenant, device)
	if err != nil {
		s.log.Error("attestation over HTTPS", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	switch strings.TrimPrefix(r.URL.Path, deviceAttestPrefix) {
	case "challenge":
		c, err := s.attest.v.NewChallenge(ctx, dev)
		if errors.Is(err, attest.ErrTooManyChallenges) {
			http.Error(w, "too many outstanding challenges; answer or let them expire", http.StatusTooManyRequests)
			return
		}
		if err != nil {
			s.log.Error("attestation challenge", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c)
	case "evidence":
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxAttestMessageSize))
		if err != nil {
			http.Error(w, "evidence too large", http.StatusRequestEntityTooLarge)
			return
		}
		ev, err := wire.ParseAttestEvidence(body)
		if err != nil {
			http.Error(w, "malformed evidence: "+err.Error(), http.StatusBadRequest)
			return
		}
		prev, prevErr := s.attest.st.LastResult(ctx, tenant, device)
		v, err := s.attest.v.Verify(ctx, dev, ev)
		if errors.Is(err, attest.ErrChallenge) {
			http.Error(w, "the evidence answers no outstanding challenge (expired, used or not yours)", http.StatusConflict)
			return
		}
		if err != nil {
			s.log.Error("attestation verify", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		if err := s.applyVerdict(ctx, dev, v, prevErr == nil && prev.Verdict.Result == attest.Fail); err != nil {
			s.log.Error("apply attestation verdict", "err", err)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v.Wire(ev.ChallengeID))
	default:
		http.NotFound(w, r)
	}
}
