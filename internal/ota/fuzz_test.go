package ota

import (
	"testing"

	"github.com/wardiot/ward/internal/ota/tufrepo"
)

func FuzzParseCustom(f *testing.F) {
	f.Add([]byte(`{"hardwareId":"a","releaseCounter":1,"securityVersion":2,"release":"fw@1","kind":"image"}`))
	f.Add([]byte(`{"hardwareId":"a","releaseCounter":1,"kind":"delta","deltaFrom":"x"}`))
	f.Add([]byte(`{"minSecurityVersion":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCustom(b)
		if err == nil && (c.ReleaseCounter == 0 || validName("hw", c.HardwareID) != nil) {
			t.Fatalf("accepted invalid custom %+v", c)
		}
	})
}

func FuzzVerifyManifest(f *testing.F) {
	s, _, _ := tufrepo.GenerateKey()
	k, _ := tufrepo.PublicKey(s)
	good, _ := SignManifest(Manifest{Release: "fw@1", HardwareID: "a"}, s)
	f.Add(good)
	f.Add([]byte(`{"signed":{},"signatures":[{"keyid":"00","sig":"00"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := VerifyManifest(b, k)
		if err == nil && m == nil {
			t.Fatal("nil manifest without error")
		}
	})
}
