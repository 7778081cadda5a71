package attest

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	gattest "github.com/google/go-attestation/attest"

	agent "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/wire"
)

const sampleDoc = `{"ward_attest":{"schema":1,"hw_model":"gw-100","release":"gw-fw@1.0.0","hash":"sha256",
 "stages":[{"name":"bootloader","pcr":0,"event":"EV_POST_CODE","sha256":"` +
	"0000000000000000000000000000000000000000000000000000000000000001" + `"}],
 "pcrs":{"7":"` + "00000000000000000000000000000000000000000000000000000000000000ff" + `"}}}`

func TestParseRefValues(t *testing.T) {
	r, err := ParseRefValues([]byte(sampleDoc))
	if err != nil {
		t.Fatal(err)
	}
	if r.Release != "gw-fw@1.0.0" || len(r.Stages) != 1 || r.PCRs[7][31] != 0xff {
		t.Fatalf("parsed %+v", r)
	}
	if got := fmt.Sprint(r.PolicyPCRs()); got != "[0 7]" {
		t.Fatalf("PolicyPCRs = %s", got)
	}
	again, err := ParseRefValues(r.Doc)
	if err != nil || string(again.Doc) != string(r.Doc) {
		t.Fatalf("canonical form is not a fixed point: %v", err)
	}
	for name, doc := range map[string]string{
		"fail/unknown-field": `{"ward_attest":{"schema":1,"x":1}}`,
		"fail/schema":        `{"ward_attest":{"schema":2,"hw_model":"m","release":"r","hash":"sha256","pcrs":{"0":"` + hex.EncodeToString(make([]byte, 32)) + `"}}}`,
		"fail/uppercase":     `{"ward_attest":{"schema":1,"hw_model":"m","release":"r","hash":"sha256","pcrs":{"0":"` + "AA" + hex.EncodeToString(make([]byte, 31)) + `"}}}`,
		"fail/pcr-key":       `{"ward_attest":{"schema":1,"hw_model":"m","release":"r","hash":"sha256","pcrs":{"07":"` + hex.EncodeToString(make([]byte, 32)) + `"}}}`,
		"fail/empty":         `{"ward_attest":{"schema":1,"hw_model":"m","release":"r","hash":"sha256"}}`,
		"fail/trailing":      sampleDoc + `{}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseRefValues([]byte(doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzParseRefValues(f *testing.F) {
	f.Add([]byte(sampleDoc))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRefValues(b)
		if err != nil {
			return
		}
		// What was accepted re-parses to the same canonical bytes.
		again, err := ParseRefValues(r.Doc)
		if err != nil || string(again.Doc) != string(r.Doc) {
			t.Fatalf("canonical form does not re-parse: %v", err)
		}
	})
}

// FuzzReplayEventLog feeds device-controlled log bytes to the parser and
// replay: errors are fine, panics are not.
func FuzzReplayEventLog(f *testing.F) {
	stages := agent.BootChain{}.Stages()
	f.Add(agent.BuildEventLog(stages))
	f.Add(agent.BuildEventLog(nil))
	pcrs := []gattest.PCR{{Index: 0, Digest: make([]byte, 32), DigestAlg: crypto.SHA256}}
	f.Fuzz(func(t *testing.T, b []byte) {
		replayLog(b, pcrs)
	})
}

func TestCheckClock(t *testing.T) {
	base := Counters{Clock: 1000, ResetCount: 5, RestartCount: 2, Safe: true}
	for name, tc := range map[string]struct {
		cur        Counters
		fail, flag bool
	}{
		"ok/clock-advanced":       {Counters{Clock: 2000, ResetCount: 5, RestartCount: 2, Safe: true}, false, false},
		"ok/reset":                {Counters{Clock: 10, ResetCount: 6, Safe: true}, false, false},
		"ok/restart":              {Counters{Clock: 10, ResetCount: 5, RestartCount: 3, Safe: true}, false, false},
		"flag/power-loss":         {Counters{Clock: 10, ResetCount: 6, Safe: false}, false, true},
		"fail/reset-down":         {Counters{Clock: 5000, ResetCount: 4, RestartCount: 9, Safe: true}, true, false},
		"fail/restart-down":       {Counters{Clock: 5000, ResetCount: 5, RestartCount: 1, Safe: true}, true, false},
		"fail/clock-not-advanced": {Counters{Clock: 1000, ResetCount: 5, RestartCount: 2, Safe: true}, true, false},
	} {
		t.Run(name, func(t *testing.T) {
			a := &appraisal{}
			checkClock(a, base, tc.cur)
			if (len(a.fails) > 0) != tc.fail || (len(a.flags) > 0) != tc.flag {
				t.Fatalf("fails %q flags %q", a.fails, a.flags)
			}
		})
	}
}

// BenchmarkVerify measures the CPU-bound part of one verification: AK
// parse, quote verification, decoding, parsing and replaying a 50-event
// log, the reference-value policy and the clock rules. The evidence is a
// real quote from swtpm.
func BenchmarkVerify(b *testing.B) {
	sim := tpmtest.Manufactured(b)
	dir := b.TempDir()
	boot := agent.SimulatedBoot{Path: filepath.Join(dir, "eventlog.bin")}
	tpm, err := agent.Open(agent.Config{Path: "tcp://" + sim.Addr, StateDir: dir, Boot: boot})
	if err != nil {
		b.Fatal(err)
	}
	defer tpm.Close()
	pcrs := []int{0, 1, 2, 3, 4, 5, 7, 9}
	var stages []agent.Stage
	type stageDoc struct {
		Name   string `json:"name"`
		PCR    int    `json:"pcr"`
		SHA256 string `json:"sha256"`
	}
	var docStages []stageDoc
	for i := range 50 {
		s := agent.Stage{Name: fmt.Sprintf("stage-%02d", i), PCR: pcrs[i%len(pcrs)], Type: agent.EvIPL,
			Digest: sha256.Sum256([]byte{byte(i)})}
		stages = append(stages, s)
		docStages = append(docStages, stageDoc{s.Name, s.PCR, hex.EncodeToString(s.Digest[:])})
	}
	if err := boot.Boot(tpm, stages); err != nil {
		b.Fatal(err)
	}
	doc, _ := json.Marshal(map[string]any{"ward_attest": map[string]any{"schema": 1, "hw_model": "m",
		"release": "r", "hash": "sha256", "stages": docStages}})
	ref, err := ParseRefValues(doc)
	if err != nil {
		b.Fatal(err)
	}
	nonce := make([]byte, NonceSize)
	rand.Read(nonce)
	ev, err := tpm.Attest(&wire.AttestChallenge{ID: "bench", Nonce: nonce, Expires: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	akPub := tpm.AKPublic()
	prev := Counters{}
	b.ReportAllocs()
	b.ResetTimer()
	// On a shared machine wall time per op mostly measures the other
	// tenants; CPU time per op is the figure to compare with the goal.
	cpu0 := cpuTime()
	for b.Loop() {
		a := &appraisal{assurance: AssuranceTPM}
		appraiseTPM(a, akPub, nonce, ev.TPM, []*RefValues{ref}, nil)
		checkClock(a, prev, a.counters)
		if len(a.fails) != 0 || a.summary.Events != 50 {
			b.Fatalf("fails %q, %d events", a.fails, a.summary.Events)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
