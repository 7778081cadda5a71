package ota

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/wire"
)

// FetchRoots fetches the first root (1.root.json) of the Image
// repository and of the device's Director repository, to be saved and
// passed as [ClientConfig.ImageRoot] and [ClientConfig.DirectorRoot].
//
// Trust decision: the roots are trusted on first use, and only because of
// the channel they came over. client must authenticate the server against
// the CA bundle received at enrollment (a transport that skips
// verification is refused) and present the device's certificate, so an
// attacker would need the server's TLS key or the platform CA to plant
// its own roots. Call it once, when the device has no saved roots, and
// never again: from then on go-tuf accepts a new root only if the
// previous one signed it, so a later compromise of the server's TLS
// cannot replace the trust anchors. A device provisioned with the roots
// at the factory does not need this at all.
func FetchRoots(ctx context.Context, client *http.Client, server, device string) (imageRoot, directorRoot []byte, err error) {
	if err := wire.ValidateDeviceID(device); err != nil {
		return nil, nil, err
	}
	if !strings.HasPrefix(server, "https://") {
		return nil, nil, errors.New("ota: roots are fetched over https only")
	}
	if client == nil {
		return nil, nil, errors.New("ota: an HTTP client with the device's mTLS identity is required")
	}
	if tr, ok := client.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil && tr.TLSClientConfig.InsecureSkipVerify {
		return nil, nil, errors.New("ota: refusing to trust roots fetched without verifying the server")
	}
	base := strings.TrimSuffix(server, "/")
	get := func(u string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, metadataTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("server answered %s", resp.Status)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxRootSize+1))
		if err != nil {
			return nil, err
		}
		if err := CheckRoot(b); err != nil {
			return nil, err
		}
		return b, nil
	}
	if imageRoot, err = get(base + wire.OTAImagePath + "1.root.json"); err != nil {
		return nil, nil, fmt.Errorf("ota: image repository root: %w", err)
	}
	if directorRoot, err = get(base + wire.OTADirectorPath + url.PathEscape(device) + "/1.root.json"); err != nil {
		return nil, nil, fmt.Errorf("ota: director repository root: %w", err)
	}
	return imageRoot, directorRoot, nil
}

// CheckRoot checks that b is a first TUF root (version 1) signed by its
// own root threshold, within the size the client accepts, and that every
// key in it is well formed: go-tuf v2.4.2 panics verifying a signature
// against an Ed25519 key of the wrong length (found by FuzzCheckRoot).
func CheckRoot(b []byte) (err error) {
	if len(b) > maxRootSize {
		return fmt.Errorf("ota: root larger than %d bytes", maxRootSize)
	}
	r, err := metadata.Root().FromBytes(b)
	if err != nil {
		return fmt.Errorf("ota: root: %w", err)
	}
	for id, k := range r.Signed.Keys {
		pub, err := k.ToPublicKey()
		if err != nil {
			return fmt.Errorf("ota: root key %.16s: %w", id, err)
		}
		if p, ok := pub.(ed25519.PublicKey); ok && len(p) != ed25519.PublicKeySize {
			return fmt.Errorf("ota: root key %.16s: Ed25519 key of %d bytes", id, len(p))
		}
	}
	// Defence in depth against other malformed keys the checks above do
	// not know about: a panic in the verifier is a refusal.
	defer func() {
		if recover() != nil {
			err = errors.New("ota: root holds a malformed key")
		}
	}()
	if r.Signed.Version != 1 {
		return fmt.Errorf("ota: root version %d, want the first (1)", r.Signed.Version)
	}
	if err := r.VerifyDelegate(metadata.ROOT, r); err != nil {
		return fmt.Errorf("ota: root is not signed by its own keys: %w", err)
	}
	return nil
}
