package deviceauth

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// maxStreamLen bounds the stream name taken from the path; it matches the
// telemetry verifier's limit.
const maxStreamLen = 64

// validStream accepts 1 to 64 letters, digits, '_' and '-': stream names
// become MQTT topic levels and NATS subject tokens, so '/', '.', '+', '#',
// '*' and '>' must never get through.
func validStream(s string) bool {
	if len(s) == 0 || len(s) > maxStreamLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// TelemetryHandler serves POST [wire.DeviceTelemetryPrefix]<stream>: a
// device holding an access token posts one COSE envelope
// (Content-Type application/cose, at most [wire.MaxEnvelopeSize] bytes),
// which goes to [Ingest] as if published over MQTT to its own telemetry
// topic. Answers: 202 accepted; 400 malformed or rejected by the
// verifier; 401 no valid token; 413 too large; 415 wrong media type; 429
// over the device's rate (with Retry-After). Mount it at the prefix; the
// stream is taken from the path.
func (s *Server) TelemetryHandler() http.Handler {
	return http.HandlerFunc(s.serveTelemetry)
}

func (s *Server) serveTelemetry(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ingest == nil {
		s.cfg.Logger.Error("device telemetry handler has no Ingest configured")
		writeProblem(w, http.StatusServiceUnavailable, "Service unavailable", "telemetry over HTTPS is not enabled on this server")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeProblem(w, http.StatusMethodNotAllowed, "Method not allowed", "post telemetry with POST")
		return
	}
	stream, ok := strings.CutPrefix(r.URL.Path, wire.DeviceTelemetryPrefix)
	if !ok || !validStream(stream) {
		writeProblem(w, http.StatusBadRequest, "Bad request", "the path must end in a stream name of 1 to 64 letters, digits, '_' or '-'")
		return
	}
	// Authenticate and rate-limit before reading a byte of the body.
	id, err := s.Authenticate(r)
	if err != nil {
		s.writeAuthError(w, r, err)
		return
	}
	ctx := r.Context()
	if ok, wait, first := s.limiter.allow(wire.DeviceClientID(id.Tenant, id.Device)); !ok {
		if first {
			s.cfg.Events.SecurityEvent(ctx, Event{Type: EventRateLimited, Time: s.cfg.Clock(), Tenant: id.Tenant,
				Device: id.Device, RemoteAddr: r.RemoteAddr, Detail: "telemetry over HTTPS above the device rate limit"})
		}
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		writeProblem(w, http.StatusTooManyRequests, "Too many requests", fmt.Sprintf("this device may post %g messages per second; retry later", s.cfg.Rate.PerSecond))
		return
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != wire.ContentTypeCOSE {
		writeProblem(w, http.StatusUnsupportedMediaType, "Unsupported media type", "the body must be a COSE envelope with Content-Type "+wire.ContentTypeCOSE)
		return
	}
	tooLarge := fmt.Sprintf("an envelope may be at most %d bytes", wire.MaxEnvelopeSize)
	if r.ContentLength > wire.MaxEnvelopeSize {
		writeProblem(w, http.StatusRequestEntityTooLarge, "Content too large", tooLarge)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxEnvelopeSize+1))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "Bad request", "could not read the request body")
		return
	}
	if len(body) > wire.MaxEnvelopeSize {
		writeProblem(w, http.StatusRequestEntityTooLarge, "Content too large", tooLarge)
		return
	}
	topic := wire.DeviceTopic(id.Device, wire.TopicTelemetry+"/"+stream)
	if err := s.cfg.Ingest.Deliver(ctx, id, topic, body); err != nil {
		if errors.Is(err, ErrRejected) {
			writeProblem(w, http.StatusBadRequest, "Telemetry rejected", err.Error())
			return
		}
		s.cfg.Logger.Error("device telemetry delivery failed", "tenant", id.Tenant, "device", id.Device, "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "Service unavailable", "the server could not take the message; retry later")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusAccepted)
}

// Register mounts the token endpoint and the telemetry handler on mux at
// their wire paths.
func (s *Server) Register(mux *http.ServeMux) {
	mux.Handle("POST "+wire.TokenPath, s.TokenHandler())
	mux.Handle("POST "+wire.DeviceTelemetryPrefix+"{stream}", s.TelemetryHandler())
}
