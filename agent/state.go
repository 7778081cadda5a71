package agent

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/wire"
)

const (
	// StateFile is the name of the identity file in Config.StateDir.
	StateFile = "identity.json"
	// stateVersion is the format of identity.json this code writes.
	stateVersion = 1
	// maxStateFileSize bounds what is read from identity.json: three PEM
	// bundles of at most wire.MaxCertsOnlyCerts certificates each are far
	// smaller, and a file this large was not written by the agent.
	maxStateFileSize = 1 << 20
	// keyPrefix starts every key name the agent owns in a keystore.
	keyPrefix = "device-"
	// tempPrefix starts temporary files left by an interrupted write.
	tempPrefix = "." + StateFile + ".tmp-"
)

// ErrNotEnrolled means StateDir holds no identity: run Enroll first.
var ErrNotEnrolled = errors.New("device is not enrolled")

// ErrAlreadyEnrolled means Enroll found an identity in StateDir. Renewal
// keeps it fresh; to enroll again from scratch, remove the state first.
var ErrAlreadyEnrolled = errors.New("device is already enrolled")

// ErrBadState means identity.json exists but cannot be used.
var ErrBadState = errors.New("unusable state file")

// stateFile is identity.json. Nothing in it is secret: keys stay in the
// keystore. It is still written 0600, as it decides which key is used.
type stateFile struct {
	Version    int    `json:"version"`
	Tenant     string `json:"tenant"`
	Device     string `json:"device"`
	Label      string `json:"label"`
	Server     string `json:"server"`
	ServerCA   string `json:"server_ca"` // PEM roots trusted for the server
	Keystore   string `json:"keystore"`  // keystore kind, for status
	Key        string `json:"key"`       // key name, keyName(Generation)
	Generation uint64 `json:"generation"`
	// Certificate is the PEM chain presented in TLS, leaf first.
	Certificate string `json:"certificate"`
	// CACerts is the PEM cacerts response the leaf was verified against.
	CACerts    string    `json:"ca_certs"`
	EnrolledAt time.Time `json:"enrolled_at"`
	RenewedAt  time.Time `json:"renewed_at,omitzero"`
}

// state is a parsed and checked stateFile.
type state struct {
	stateFile
	chain   []*x509.Certificate // leaf first
	caCerts []*x509.Certificate
}

func (s *state) leaf() *x509.Certificate { return s.chain[0] }

func keyName(gen uint64) string { return keyPrefix + strconv.FormatUint(gen, 10) }

// parseState parses and checks identity.json. It does not touch the
// keystore or verify the chain against time, which the caller does.
func parseState(b []byte) (*state, error) {
	if len(b) > maxStateFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadState, maxStateFileSize)
	}
	var s state
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&s.stateFile); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrBadState)
	}
	f := &s.stateFile
	var errs []error
	if f.Version != stateVersion {
		errs = append(errs, fmt.Errorf("version %d, this agent reads version %d", f.Version, stateVersion))
	}
	if err := wire.ValidateTenantID(f.Tenant); err != nil {
		errs = append(errs, err)
	}
	if err := wire.ValidateDeviceID(f.Device); err != nil {
		errs = append(errs, err)
	}
	if err := wire.ValidateESTLabel(f.Label); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseServer(f.Server); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseCABundle([]byte(f.ServerCA)); err != nil {
		errs = append(errs, fmt.Errorf("server_ca: %w", err))
	}
	if f.Generation == 0 || f.Generation > 1<<53 {
		errs = append(errs, fmt.Errorf("generation %d out of range", f.Generation))
	} else if f.Key != keyName(f.Generation) {
		errs = append(errs, fmt.Errorf("key %q does not match generation %d", truncate(f.Key, 64), f.Generation))
	}
	var err error
	if s.chain, err = parsePEMCerts([]byte(f.Certificate), maxStateFileSize); err != nil {
		errs = append(errs, fmt.Errorf("certificate: %w", err))
	}
	if s.caCerts, err = parsePEMCerts([]byte(f.CACerts), maxStateFileSize); err != nil {
		errs = append(errs, fmt.Errorf("ca_certs: %w", err))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrBadState, errors.Join(errs...))
	}
	return &s, nil
}

func (s *state) marshal() ([]byte, error) {
	s.Certificate = string(encodePEMCerts(s.chain))
	s.CACerts = string(encodePEMCerts(s.caCerts))
	b, err := json.MarshalIndent(&s.stateFile, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// readState reads StateDir/identity.json.
func readState(dir string) (*state, error) {
	f, err := os.Open(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s in %s", ErrNotEnrolled, StateFile, dir)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFileSize+1))
	if err != nil {
		return nil, err
	}
	return parseState(b)
}

// prepareStateDir creates dir 0700 if needed and refuses one that others
// can write to: whoever can replace identity.json chooses which of the
// device's keys is used and which server it trusts.
func prepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory: %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state directory %s has mode %04o and can be written by others; run chmod 700 on it", dir, fi.Mode().Perm())
	}
	return nil
}

// writeState replaces StateDir/identity.json atomically: a crash leaves
// either the old file or the new one, never a mix. committed reports
// whether the new file took the old one's place (an error may still
// follow, if the directory could not be synced). hook marks the steps for
// crash tests.
func writeState(dir string, s *state, hook func(string)) (committed bool, err error) {
	b, err := s.marshal()
	if err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return false, fmt.Errorf("writing state: %w", err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return ok, fmt.Errorf("writing state: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		return ok, fmt.Errorf("writing state: %w", err)
	}
	// The data must be on disk before the rename makes it the state, or a
	// power cut could leave a renamed but empty file.
	if err := tmp.Sync(); err != nil {
		return ok, fmt.Errorf("writing state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return ok, fmt.Errorf("writing state: %w", err)
	}
	hook("state-temp-written")
	if err := os.Rename(tmpName, filepath.Join(dir, StateFile)); err != nil {
		return ok, fmt.Errorf("writing state: %w", err)
	}
	ok = true
	hook("state-renamed")
	// The rename itself must be durable before the old key is destroyed.
	if err := atomicfile.SyncDir(dir); err != nil {
		return ok, fmt.Errorf("writing state: %w", err)
	}
	return true, nil
}

// removeTempFiles deletes temporary state files left by a crash.
func removeTempFiles(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
