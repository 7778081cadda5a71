package ota

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// maxManifestSize bounds a release manifest we parse.
const maxManifestSize = 64 << 10

// FileRef names a target file and its hash.
type FileRef struct {
	Path   string `json:"path"`
	Length int64  `json:"length"`
	SHA256 string `json:"sha256"`
}

// Manifest is a release's own signed statement: which image, SBOM and
// reference values make up the release and its anti-rollback numbers.
type Manifest struct {
	Release         string    `json:"release"`
	HardwareID      string    `json:"hardwareId"`
	ReleaseCounter  uint64    `json:"releaseCounter"`
	SecurityVersion uint64    `json:"securityVersion"`
	Image           FileRef   `json:"image"`
	SBOM            *FileRef  `json:"sbom,omitempty"`
	RefValues       *FileRef  `json:"refvalues,omitempty"`
	Created         time.Time `json:"created"`
}

type signedManifest struct {
	Signed     json.RawMessage      `json:"signed"`
	Signatures []metadata.Signature `json:"signatures"`
}

// SignManifest returns the manifest as {"signed": ..., "signatures": [...]}
// signed over the exact bytes of "signed".
func SignManifest(m Manifest, s tufrepo.Signer) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	sig, err := s.SignMessage(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("ota: sign manifest: %w", err)
	}
	id, err := tufrepo.KeyID(s)
	if err != nil {
		return nil, err
	}
	return json.Marshal(signedManifest{Signed: body, Signatures: []metadata.Signature{{KeyID: id, Signature: sig}}})
}

// VerifyManifest checks a manifest's signature by key and returns it.
func VerifyManifest(data []byte, key *metadata.Key) (*Manifest, error) {
	if len(data) > maxManifestSize {
		return nil, errors.New("ota: manifest too large")
	}
	var sm signedManifest
	if err := json.Unmarshal(data, &sm); err != nil {
		return nil, fmt.Errorf("ota: manifest: %w", err)
	}
	id, err := key.ID()
	if err != nil {
		return nil, err
	}
	pub, err := key.ToPublicKey()
	if err != nil {
		return nil, err
	}
	hash := crypto.SHA256
	if _, ok := pub.(ed25519.PublicKey); ok {
		hash = crypto.Hash(0)
	}
	v, err := signature.LoadVerifier(pub, hash)
	if err != nil {
		return nil, err
	}
	ok := false
	for _, s := range sm.Signatures {
		if s.KeyID == id && v.VerifySignature(bytes.NewReader(s.Signature), bytes.NewReader(sm.Signed)) == nil {
			ok = true
		}
	}
	if !ok {
		return nil, errors.New("ota: manifest is not signed by the release key")
	}
	var m Manifest
	if err := json.Unmarshal(sm.Signed, &m); err != nil {
		return nil, fmt.Errorf("ota: manifest: %w", err)
	}
	return &m, nil
}
