package keystore

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	ok := map[string]Spec{
		"file:/var/lib/ward/keys":  {Kind: KindFile, Path: "/var/lib/ward/keys"},
		"file:relative/dir":        {Kind: KindFile, Path: "relative/dir"},
		"tpm:/dev/tpmrm0":          {Kind: KindTPM, Path: "/dev/tpmrm0"},
		"tpm:tcp://127.0.0.1:2321": {Kind: KindTPM, Path: "tcp://127.0.0.1:2321"},
		"tpm:tcp://[::1]:2321":     {Kind: KindTPM, Path: "tcp://[::1]:2321"},
		"pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=ward;pin=1234": {
			Kind: KindPKCS11, Module: "/usr/lib/softhsm/libsofthsm2.so", Token: "ward", PIN: "1234"},
		"pkcs11:module=/m.so;token=my%20token;pin-source=/etc/ward/pin": {
			Kind: KindPKCS11, Module: "/m.so", Token: "my token", PINSource: "/etc/ward/pin"},
		// RFC 7512 spelling.
		"pkcs11:token=ward?module-path=/m.so&pin-value=12%3B34": {
			Kind: KindPKCS11, Module: "/m.so", Token: "ward", PIN: "12;34"},
	}
	for in, want := range ok {
		got, err := ParseSpec(in)
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("ParseSpec(%q) = %+v, want %+v", in, got, want)
		}
	}
	bad := []string{
		"", "file", "file:", "nope:/x", "tpm:", "tpm:dev/tpm0", "tpm:tcp://", "tpm:tcp://host",
		"tpm:tcp://h:0", "tpm:tcp://h:70000", "tpm:tcp://:2321",
		"pkcs11:", "pkcs11:module=/m.so", "pkcs11:module=/m.so;token=t",
		"pkcs11:module=/m.so;token=t;pin=1;pin-source=/p",
		"pkcs11:module=/m.so;token=t;pin=", "pkcs11:module=/m.so;token=t;pin=1;pin=2",
		"pkcs11:module=/m.so;module-path=/n.so;token=t;pin=1",
		"pkcs11:module=/m.so;token=t;pin=1;slot=3", "pkcs11:module=/m.so;token=t;pin",
		"pkcs11:module=/m.so;token=%zz;pin=1", "file:/a\x00b",
		"file:/" + strings.Repeat("a", maxSpecLen),
	}
	for _, in := range bad {
		if _, err := ParseSpec(in); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("ParseSpec(%q): err = %v, want ErrInvalidSpec", truncate(in, 40), err)
		}
	}
}

// TestParseSpecErrorsHidePIN: a malformed spec's error never echoes the
// PIN, even when the PIN is what is malformed.
func TestParseSpecErrorsHidePIN(t *testing.T) {
	const pin = "s3cr3t-pin"
	for _, in := range []string{
		"pkcs11:module=/m.so;pin=" + pin,
		"pkcs11:module=/m.so;token=t;pin=" + pin + ";pin=" + pin,
		"pkcs11:module=/m.so;token=t;pin=" + pin + "%zz",
		"pkcs11:module=/m.so;token=t;pin=" + pin + ";" + pin,
		"pkcs11:module=/m.so;token=t;" + pin + "=x",
	} {
		_, err := ParseSpec(in)
		if err == nil {
			t.Fatalf("ParseSpec(%q) succeeded", in)
		}
		if strings.Contains(err.Error(), pin) {
			t.Errorf("error shows the PIN: %v", err)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"file:/var/lib/ward/keys", "tpm:/dev/tpmrm0", "tpm:tcp://127.0.0.1:2321",
		"pkcs11:module=/m.so;token=ward;pin=1234", "pkcs11:token=w?module-path=/m.so&pin-value=1",
		"pkcs11:module=%2Fm.so;token=a%3Bb;pin-source=/p", "pkcs11:;;;?&&", "tpm:tcp://[::1]:1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSpec(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error %v does not wrap ErrInvalidSpec", err)
			}
			return
		}
		switch s.Kind {
		case KindFile, KindTPM:
			if s.Path == "" {
				t.Fatal("accepted an empty path")
			}
		case KindPKCS11:
			if s.Module == "" || s.Token == "" || (s.PIN == "") == (s.PINSource == "") {
				t.Fatalf("accepted an incomplete pkcs11 spec %+v", s)
			}
		default:
			t.Fatalf("unknown kind %q", s.Kind)
		}
		// The canonical form parses back to the same spec, PIN aside.
		back, err := ParseSpec(s.String())
		if err != nil {
			t.Fatalf("String() %q does not parse: %v", s.String(), err)
		}
		if s.PIN != "" {
			if back.PIN != "REDACTED" {
				t.Fatalf("String() does not redact the PIN: %q", s.String())
			}
			back.PIN = s.PIN
		}
		if back != s {
			t.Fatalf("round trip: %+v -> %q -> %+v", s, s.String(), back)
		}
	})
}
