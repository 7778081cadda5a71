package agentcli

import (
	"strings"
	"testing"

	"github.com/wardiot/ward/wire"
)

func FuzzParseTokenFile(f *testing.F) {
	f.Add([]byte("a 1\n# c\n\nb 2\n"))
	f.Add([]byte("a\tb\r\nc d e\n"))
	f.Add([]byte(strings.Repeat("x", 70000) + " t\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := parseTokenFile(b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, d := range ds {
			if wire.ValidateDeviceID(d.id) != nil || d.token == "" || seen[d.id] {
				t.Fatalf("accepted %+v", d)
			}
			seen[d.id] = true
		}
	})
}

func FuzzParseBootstrap(f *testing.F) {
	for _, s := range []string{"tpm", "x509:a.pem,b.pem", "symmetric:k", "token:wardgrp_x_y", "x509:,", "tpm:", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := parseBootstrap(s)
		if err != nil {
			return
		}
		switch b.kind {
		case "tpm":
			if len(b.args) != 0 {
				t.Fatalf("tpm with args %q", b.args)
			}
		case "x509":
			if len(b.args) != 2 || b.args[0] == "" || b.args[1] == "" {
				t.Fatalf("x509 args %q", b.args)
			}
		case "token", "symmetric":
			if len(b.args) != 1 || b.args[0] == "" {
				t.Fatalf("%s args %q", b.kind, b.args)
			}
		default:
			t.Fatalf("accepted kind %q", b.kind)
		}
	})
}
