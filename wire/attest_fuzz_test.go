package wire

import (
	"encoding/json"
	"testing"
	"time"
)

func evidenceSeed(t testing.TB) []byte {
	e := AttestEvidence{ChallengeID: "c1", TPM: &TPMEvidence{
		AKPublic: []byte{1, 2, 3},
		Quotes:   []TPMQuote{{Quote: []byte{4}, Signature: []byte{5}}},
		PCRs:     []PCRValue{{Index: 0, Alg: "sha256", Digest: make([]byte, 32)}},
		EventLog: []byte{6},
	}}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func softwareSeed(t testing.TB) []byte {
	e := AttestEvidence{ChallengeID: "c2", Software: &SoftwareReport{
		Nonce: make([]byte, 32), ActiveSlot: "a",
		Slots: map[string][]byte{"a": make([]byte, 32)}, Time: time.Unix(1, 0).UTC(), Signature: []byte{1},
	}}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseAttestEvidence(t *testing.T) {
	for name, tc := range map[string]struct {
		in []byte
		ok bool
	}{
		"ok/tpm":             {evidenceSeed(t), true},
		"ok/software":        {softwareSeed(t), true},
		"fail/unknown-field": {[]byte(`{"challenge_id":"c","x":1}`), false},
		"fail/both-missing":  {[]byte(`{"challenge_id":"c"}`), false},
		"fail/trailing":      {append(evidenceSeed(t), []byte(`{}`)...), false},
		"fail/bad-id":        {[]byte(`{"challenge_id":"a/b","tpm":{}}`), false},
		"fail/short-pcr":     {[]byte(`{"challenge_id":"c","tpm":{"ak_public":"AQ==","quotes":[{"quote":"AQ==","signature":"AQ=="}],"pcrs":[{"index":0,"alg":"sha256","digest":"AQ=="}],"event_log":"AQ=="}}`), false},
		"fail/too-big":       {make([]byte, MaxAttestMessageSize+1), false},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseAttestEvidence(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseAttestEvidence: err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestRenewalNonce(t *testing.T) {
	a := RenewalNonce([]byte("server"), []byte("spki-1"))
	b := RenewalNonce([]byte("server"), []byte("spki-2"))
	if len(a) != 32 || string(a) == string(b) {
		t.Fatalf("RenewalNonce does not bind the key: %x %x", a, b)
	}
}

func FuzzParseAttestEvidence(f *testing.F) {
	f.Add(evidenceSeed(f))
	f.Add(softwareSeed(f))
	f.Add([]byte(`{"challenge_id":"c","tpm":null,"software":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseAttestEvidence(b)
		if err != nil {
			return
		}
		if (e.TPM == nil) == (e.Software == nil) {
			t.Fatal("accepted evidence without exactly one tier")
		}
		if e.Software != nil {
			if _, err := e.Software.SignedBytes(); err != nil {
				t.Fatalf("SignedBytes of accepted report: %v", err)
			}
		}
	})
}

func FuzzParseAttestChallenge(f *testing.F) {
	f.Add([]byte(`{"id":"x","nonce":"AAAAAAAAAAAAAAAAAAAAAA==","pcrs":[0,9],"expires":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseAttestChallenge(b)
		if err == nil && (len(c.Nonce) < 16 || c.ID == "") {
			t.Fatal("accepted a challenge without nonce or id")
		}
	})
}

func FuzzParseAKMessages(f *testing.F) {
	f.Add([]byte(`{"ek_cert":"AQ==","ak":{"public":"AQ==","create_data":"AQ==","create_attestation":"AQ==","create_signature":"AQ=="}}`))
	f.Add([]byte(`{"id":"a","credential":"AQ==","secret":"AQ=="}`))
	f.Add([]byte(`{"id":"a","secret":"AQ=="}`))
	f.Add([]byte(`{"challenge_id":"a","result":"pass","assurance":"tpm","time":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseAKEnrollRequest(b)
		ParseAKActivationChallenge(b)
		ParseAKActivationResponse(b)
		ParseAttestVerdict(b)
	})
}

func FuzzParseAttestRenewalRequest(f *testing.F) {
	f.Add([]byte(`{"spki":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"}`))
	f.Add([]byte(`{"spki":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseAttestRenewalRequest(b)
		if err == nil && (len(r.SPKI) == 0 || len(r.SPKI) > MaxSPKISize) {
			t.Fatalf("accepted an SPKI of %d bytes", len(r.SPKI))
		}
	})
}
