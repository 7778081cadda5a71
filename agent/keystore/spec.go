package keystore

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Backend kinds, as returned by [Keystore.Kind] and found in [Spec.Kind].
const (
	KindFile   = "file"
	KindPKCS11 = "pkcs11"
	KindTPM    = "tpm"
)

// maxSpecLen bounds a spec string: it comes from flags, config files and
// environment variables, and nothing legitimate is longer than a path
// (PATH_MAX is 4096 on Linux) plus a few attributes.
const maxSpecLen = 4096

// ErrInvalidSpec means a keystore spec could not be parsed.
var ErrInvalidSpec = errors.New("keystore: invalid spec")

// Spec is a parsed keystore spec.
type Spec struct {
	// Kind is KindFile, KindPKCS11 or KindTPM.
	Kind string
	// Path is the key directory (file), or the TPM device path or
	// tcp://host:port of a TPM simulator's command port (tpm).
	Path string
	// Module is the PKCS#11 module (shared library) path.
	Module string
	// Token is the PKCS#11 token label.
	Token string
	// PIN is the PKCS#11 user PIN given inline. Prefer PINSource.
	PIN string
	// PINSource is a file holding the PKCS#11 user PIN (one line, mode
	// 0600 or stricter).
	PINSource string
}

// String returns the spec in canonical form with any PIN redacted, so a
// Spec can be logged.
func (s Spec) String() string {
	switch s.Kind {
	case KindPKCS11:
		var b strings.Builder
		b.WriteString("pkcs11:module=")
		b.WriteString(escapeAttr(s.Module))
		b.WriteString(";token=")
		b.WriteString(escapeAttr(s.Token))
		if s.PIN != "" {
			b.WriteString(";pin=REDACTED")
		}
		if s.PINSource != "" {
			b.WriteString(";pin-source=")
			b.WriteString(escapeAttr(s.PINSource))
		}
		return b.String()
	default:
		return s.Kind + ":" + s.Path
	}
}

// attrEscaper percent-encodes only what would change how a pkcs11 spec
// splits, so paths stay readable in logs.
var attrEscaper = strings.NewReplacer("%", "%25", ";", "%3B", "?", "%3F", "&", "%26", "=", "%3D")

func escapeAttr(s string) string { return attrEscaper.Replace(s) }

// ParseSpec parses a keystore spec:
//
//	file:DIR
//	pkcs11:module=PATH;token=LABEL;pin=PIN
//	pkcs11:module=PATH;token=LABEL;pin-source=FILE
//	tpm:/dev/tpmrm0
//	tpm:tcp://HOST:PORT
//
// PKCS#11 attribute values may be percent-encoded as in RFC 7512, whose
// names module-path and pin-value are accepted as synonyms, and which may
// also appear after a '?' separated by '&'. Exactly one of pin and
// pin-source is required. Errors never echo a PIN.
func ParseSpec(spec string) (Spec, error) {
	if len(spec) > maxSpecLen {
		return Spec{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidSpec, maxSpecLen)
	}
	if strings.IndexByte(spec, 0) >= 0 {
		return Spec{}, fmt.Errorf("%w: contains a NUL byte", ErrInvalidSpec)
	}
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		return Spec{}, fmt.Errorf("%w: want KIND:..., KIND one of file, pkcs11, tpm", ErrInvalidSpec)
	}
	switch kind {
	case KindFile:
		if rest == "" {
			return Spec{}, fmt.Errorf("%w: file: needs a directory, e.g. file:/var/lib/ward-agent/keys", ErrInvalidSpec)
		}
		return Spec{Kind: KindFile, Path: rest}, nil
	case KindTPM:
		return parseTPMSpec(rest)
	case KindPKCS11:
		return parsePKCS11Spec(rest)
	}
	return Spec{}, fmt.Errorf("%w: unknown kind %q, want file, pkcs11 or tpm", ErrInvalidSpec, truncate(kind, 16))
}

func parseTPMSpec(rest string) (Spec, error) {
	if addr, ok := strings.CutPrefix(rest, "tcp://"); ok {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			return Spec{}, fmt.Errorf("%w: tpm:tcp:// needs HOST:PORT", ErrInvalidSpec)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return Spec{}, fmt.Errorf("%w: tpm:tcp:// port must be 1-65535", ErrInvalidSpec)
		}
		return Spec{Kind: KindTPM, Path: rest}, nil
	}
	if !strings.HasPrefix(rest, "/") {
		return Spec{}, fmt.Errorf("%w: tpm: needs an absolute device path (tpm:/dev/tpmrm0) or tcp://HOST:PORT", ErrInvalidSpec)
	}
	return Spec{Kind: KindTPM, Path: rest}, nil
}

func parsePKCS11Spec(rest string) (Spec, error) {
	s := Spec{Kind: KindPKCS11}
	path, query, _ := strings.Cut(rest, "?")
	attrs := strings.Split(path, ";")
	if query != "" {
		attrs = append(attrs, strings.Split(query, "&")...)
	}
	seen := map[string]bool{}
	// Errors name attributes by position, never by content: a PIN typed
	// in the wrong place must not end up in a log.
	for i, a := range attrs {
		if a == "" {
			continue
		}
		k, raw, ok := strings.Cut(a, "=")
		if !ok {
			return Spec{}, fmt.Errorf("%w: pkcs11 attribute #%d has no '='", ErrInvalidSpec, i+1)
		}
		v, err := url.PathUnescape(raw)
		if err != nil || strings.IndexByte(v, 0) >= 0 {
			return Spec{}, fmt.Errorf("%w: pkcs11 attribute #%d has a bad percent-encoding", ErrInvalidSpec, i+1)
		}
		var dst *string
		switch k {
		case "module", "module-path":
			k, dst = "module", &s.Module
		case "token":
			dst = &s.Token
		case "pin", "pin-value":
			k, dst = "pin", &s.PIN
		case "pin-source":
			dst = &s.PINSource
		default:
			return Spec{}, fmt.Errorf("%w: pkcs11 attribute #%d is not one of module, token, pin, pin-source", ErrInvalidSpec, i+1)
		}
		if seen[k] {
			return Spec{}, fmt.Errorf("%w: pkcs11 attribute %q given twice", ErrInvalidSpec, k)
		}
		seen[k] = true
		*dst = v
	}
	switch {
	case s.Module == "":
		return Spec{}, fmt.Errorf("%w: pkcs11 needs module=PATH of the PKCS#11 library", ErrInvalidSpec)
	case s.Token == "":
		return Spec{}, fmt.Errorf("%w: pkcs11 needs token=LABEL", ErrInvalidSpec)
	case seen["pin"] == seen["pin-source"]:
		return Spec{}, fmt.Errorf("%w: pkcs11 needs exactly one of pin=... or pin-source=FILE", ErrInvalidSpec)
	case seen["pin"] && s.PIN == "":
		return Spec{}, fmt.Errorf("%w: pkcs11 pin is empty", ErrInvalidSpec)
	case seen["pin-source"] && s.PINSource == "":
		return Spec{}, fmt.Errorf("%w: pkcs11 pin-source is empty", ErrInvalidSpec)
	}
	return s, nil
}
