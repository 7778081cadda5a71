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
