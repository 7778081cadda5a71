package agentcli

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/wardiot/ward/agent"
)

// Limits on the files --bootstrap names.
const (
	// maxBootstrapSpecLen bounds the --bootstrap value: a kind and two
	// paths.
	maxBootstrapSpecLen = 8 << 10
	// maxCertFileSize bounds a manufacturer certificate chain (a few
	// certificates of a few KiB).
	maxCertFileSize = 64 << 10
	// maxKeyFileSize bounds a PEM private key or a symmetric key file.
	maxKeyFileSize = 16 << 10
	// symKeySize is K_dev's size: an HMAC-SHA256 output.
	symKeySize = 32
)

// bootstrapSpec is a parsed --bootstrap value.
type bootstrapSpec struct {
	kind string   // "token", "x509", "tpm", "symmetric"
	args []string // token: [TOKEN]; x509: [CERT, KEY]; symmetric: [KEYFILE]
}

// parseBootstrap parses "x509:CERT.pem,KEY.pem", "tpm",
// "symmetric:KEYFILE" or "token:TOKEN". It reads no file.
func parseBootstrap(s string) (*bootstrapSpec, error) {
	if len(s) > maxBootstrapSpecLen {
		return nil, fmt.Errorf("--bootstrap is longer than %d bytes", maxBootstrapSpecLen)
	}
	kind, rest, hasArg := strings.Cut(s, ":")
	bad := func(why string) error {
		return fmt.Errorf("--bootstrap %s: %s (want x509:CERT.pem,KEY.pem, tpm, symmetric:KEYFILE or token:TOKEN)", kind, why)
	}
	switch kind {
	case "tpm":
		if hasArg {
			return nil, bad("takes no argument")
		}
		return &bootstrapSpec{kind: kind}, nil
	case "token", "symmetric":
		if rest == "" {
			return nil, bad("needs an argument")
		}
		return &bootstrapSpec{kind: kind, args: []string{rest}}, nil
	case "x509":
		cert, key, ok := strings.Cut(rest, ",")
		if !ok || cert == "" || key == "" {
			return nil, bad("needs CERT.pem,KEY.pem")
		}
		return &bootstrapSpec{kind: kind, args: []string{cert, key}}, nil
	}
	return nil, fmt.Errorf("--bootstrap: unknown mechanism %q (want x509:CERT.pem,KEY.pem, tpm, symmetric:KEYFILE or token:TOKEN)", truncateArg(kind))
}

func truncateArg(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// credential builds the agent credential, reading the files spec names.
func (b *bootstrapSpec) credential(basic bool) (agent.Credential, error) {
	if basic && b.kind != "token" {
		return nil, fmt.Errorf("--basic applies to enrollment tokens only, not --bootstrap %s", b.kind)
	}
	switch b.kind {
	case "token":
		if basic {
			return agent.BasicToken(b.args[0]), nil
		}
		return agent.Token(b.args[0]), nil
	case "tpm":
		return agent.TPM(), nil
	case "symmetric":
		raw, err := readFileLimited(b.args[0], maxKeyFileSize, "symmetric key file")
		if err != nil {
			return nil, err
		}
		key, err := parseSymKey(raw)
		if err != nil {
			return nil, fmt.Errorf("symmetric key file %s: %w", b.args[0], err)
		}
		return agent.Symmetric(key), nil
	case "x509":
		certPEM, err := readFileLimited(b.args[0], maxCertFileSize, "manufacturer certificate")
		if err != nil {
			return nil, err
		}
		chain, err := parseCertChain(certPEM)
		if err != nil {
			return nil, fmt.Errorf("manufacturer certificate %s: %w", b.args[0], err)
		}
		keyPEM, err := readFileLimited(b.args[1], maxKeyFileSize, "manufacturer key")
		if err != nil {
			return nil, err
		}
		key, err := parsePrivateKey(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("manufacturer key %s: %w", b.args[1], err)
		}
		if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey) {
			return nil, fmt.Errorf("manufacturer key %s does not belong to the certificate in %s", b.args[1], b.args[0])
		}
		return agent.X509(chain, key), nil
	}
	return nil, fmt.Errorf("--bootstrap: unknown mechanism %q", b.kind)
}

// parseSymKey accepts K_dev as 32 raw bytes, or as hex or base64 text.
func parseSymKey(b []byte) ([]byte, error) {
	if len(b) == symKeySize {
		return b, nil
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) == symKeySize {
		return k, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == symKeySize {
			return k, nil
		}
	}
	return nil, fmt.Errorf("want the %d-byte device key, raw or as hex or base64 text", symKeySize)
}

// parseCertChain parses PEM CERTIFICATE blocks, leaf first.
func parseCertChain(b []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return chain, nil
}

// parsePrivateKey parses a PEM PKCS#8, SEC 1 or PKCS#1 private key.
func parsePrivateKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key block")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue // EC PARAMETERS and the like
		}
		if err != nil {
			return nil, errors.New("the private key does not parse") // no key bytes in errors
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, errors.New("unsupported private key type")
		}
		return s, nil
	}
}
