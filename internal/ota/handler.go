package ota

import (
	"bytes"

	"net/http"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// maxPathLen bounds a request path: target paths are at most a few
// hundred bytes (see nameRE); longer requests are junk.
const maxPathLen = 1024

// Authorizer decides who may read the repositories. The server implements
// it from the mTLS identity (wire.ParseDeviceURI on the client
// certificate): Device returns the authenticated device ID, or an error
// when the request carries no acceptable identity.
type Authorizer interface {
	Device(r *http.Request) (string, error)
}

// Handler serves the image repository under wire.OTAImagePath and the
// Director under wire.OTADirectorPath for one tenant; the server routes
// each tenant's devices to that tenant's Handler.
type Handler struct {
	Image    *Image
	Director *Director
	Auth     Authorizer
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if len(r.URL.Path) > maxPathLen || strings.Contains(r.URL.Path, "..") {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	device, err := h.Auth.Device(r)
	if err != nil {
		http.Error(w, "a device certificate is required", http.StatusUnauthorized)
		return
	}
	ctx := r.Context()
	switch {
	case strings.HasPrefix(r.URL.Path, wire.OTAImagePath):
		rest := strings.TrimPrefix(r.URL.Path, wire.OTAImagePath)
		if p, ok := strings.CutPrefix(rest, "targets/"); ok {
			f, _, err := h.Image.Open(ctx, p)
			if err != nil {
				http.Error(w, "no such target", http.StatusNotFound)
				return
			}
			defer f.Close()
			w.Header().Set("Content-Type", "application/octet-stream")
			// Target content never changes under a path: an ETag lets
			// If-Range resume safely.
			w.Header().Set("ETag", `"`+p+`"`)
			http.ServeContent(w, r, "", time.Time{}, f)
			return
		}
		h.metadata(w, r, func() ([]byte, error) { return h.Image.Repo().File(ctx, rest) })
	case strings.HasPrefix(r.URL.Path, wire.OTADirectorPath):
		rest := strings.TrimPrefix(r.URL.Path, wire.OTADirectorPath)
		dev, file, ok := strings.Cut(rest, "/")
		if !ok || wire.ValidateDeviceID(dev) != nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if dev != device {
			http.Error(w, "a device may only read its own Director repository", http.StatusForbidden)
			return
		}
		h.metadata(w, r, func() ([]byte, error) { return h.Director.File(ctx, dev, file) })
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

func (h *Handler) metadata(w http.ResponseWriter, r *http.Request, get func() ([]byte, error)) {
	b, err := get()
	if err != nil {
		// Missing or invalid names are indistinguishable on purpose; TUF
		// clients probe N+1.root.json and expect 404.
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}
