package agent_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/wire"
)

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Fri, 02 Jan 2026 03:05:05 GMT", "Friday, 02-Jan-26 03:05:05 GMT", "Fri Jan  2 03:05:05 2026", "-1", "1e9", "99999999999999999999"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := agent.ParseRetryAfter(s, now)
		if !ok {
			return
		}
		if d < 0 {
			t.Fatalf("%q: negative wait %v", s, d)
		}
		if len(s) > 64 {
			t.Fatalf("%q: accepted over the length limit", s)
		}
	})
}

// FuzzReadStatus feeds arbitrary bytes to the identity.json loader. It
// must never panic, and what it accepts must describe a certificate.
func FuzzReadStatus(f *testing.F) {
	e := newEnv(f, nil)
	e.enroll(f)
	good, err := os.ReadFile(filepath.Join(e.cfg.StateDir, agent.StateFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"generation":18446744073709551615,"key":"device-0"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, agent.StateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := agent.ReadStatus(dir, time.Now())
		if err != nil {
			return
		}
		if s.Serial == "" || s.KeyName == "" || s.Generation == 0 {
			t.Fatalf("accepted state without a credential: %+v", s)
		}
	})
}

func FuzzParseTPMChallenge(f *testing.F) {
	f.Add([]byte(`{"challenge":"AAEC","credential":"AAEC","secret":"AAEC","nonce":"AQ==","device_id":"tpm-ab","expires":1}`))
	f.Add([]byte(`{"challenge":"","device_id":"../x"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ch, err := agent.ParseTPMChallenge(b)
		if err != nil {
			return
		}
		if len(b) > 16<<10 || len(ch.Challenge) == 0 || len(ch.Nonce) == 0 || len(ch.Credential) < 2 || len(ch.Secret) < 2 || wire.ValidateDeviceID(ch.DeviceID) != nil {
			t.Fatalf("accepted %q", b)
		}
	})
}
