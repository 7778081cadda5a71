package server

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/internal/tenant"
)

// Files in the data directory.
const (
	fileKEK        = "kek.key"              // key-encryption key (0600)
	filePlatformCA = "platform-ca.pem"      // platform CA certificate
	filePlatformK  = "platform-ca.key.seal" // platform CA key, sealed by the KEK
	fileCABundle   = "ca.pem"               // what API clients and agents trust
	fileAdminToken = "admin.token"          // first admin token, written once (0600)
	fileState      = "ward.json"            // initialisation marker and listener addresses
	fileDB         = "ward.db"              // SQLite database
)

// State is what the server records in ward.json for the CLI on the same
// host: where the API listens. It holds no secrets.
type State struct {
	Initialized time.Time `json:"initialized"`
	APIAddr     string    `json:"api_addr"`
	MQTTAddr    string    `json:"mqtt_addr"`
	HTTPAddr    string    `json:"http_addr"`
}

// ReadState reads DIR/ward.json.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, fileState))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", fileState, err)
	}
	return &s, nil
}

// CABundlePath and AdminTokenPath name files the CLI reads with --data.
func CABundlePath(dir string) string   { return filepath.Join(dir, fileCABundle) }
func AdminTokenPath(dir string) string { return filepath.Join(dir, fileAdminToken) }

// platformCA is the installation's own CA: it signs the API and MQTT
// server certificates. Tenant device CAs are separate (package pki).
type platformCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func loadOrCreatePlatformCA(dir string, kek tenant.KEK) (*platformCA, error) {
	certPath, keyPath := filepath.Join(dir, filePlatformCA), filepath.Join(dir, filePlatformK)
	aad := []byte("ward platform ca key")
	if certPEM, err := os.ReadFile(certPath); err == nil {
		sealed, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("platform CA key: %w", err)
		}
		der, err := kek.Unwrap(sealed, aad)
		if err != nil {
			return nil, fmt.Errorf("platform CA key: %w (is kek.key the one this data directory was created with?)", err)
		}
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("platform CA key: %w", err)
		}
		b, _ := pem.Decode(certPEM)
		if b == nil {
			return nil, errors.New("platform CA certificate: not PEM")
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("platform CA certificate: %w", err)
		}
		return &platformCA{cert: c, key: k.(crypto.Signer)}, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "Ward platform CA", Organization: []string{"Ward"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	sealed, err := kek.Wrap(pk, aad)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(keyPath, sealed, 0o600); err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, fileCABundle), certPEM, 0o644); err != nil {
		return nil, err
	}
	return &platformCA{cert: cert, key: key}, nil
}

func randSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b)
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b)
}

// serverCertLifetime: the API/MQTT server certificate is re-issued at every
// start, so it can be short and never needs a renewal path of its own.
const serverCertLifetime = 90 * 24 * time.Hour

// issueServerCert makes a TLS certificate for the listeners, valid for
// localhost, loopback and the configured host names.
func (p *platformCA) issueServerCert(hosts []string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "Ward server"},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(serverCertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	seen := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	ski := sha256.Sum256(elliptic.MarshalCompressed(elliptic.P256(), key.X, key.Y))
	tmpl.SubjectKeyId = ski[:20]
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der, p.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
