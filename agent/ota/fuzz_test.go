package ota

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

func FuzzParseJournal(f *testing.F) {
	j := &Journal{Seq: 3, Phase: PhaseDownloading, Release: "fw@2", Target: "fw-2.img", SHA256: sha([]byte("x")),
		Length: 10, Offset: 4, Slot: SlotB, Installed: Installed{Slot: SlotA}}
	b, _ := json.Marshal(j)
	f.Add(b)
	f.Add([]byte(`{"seq":1,"phase":"committed","installed":{"slot":"b"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := ParseJournal(b)
		if err != nil {
			return
		}
		// What parses re-encodes to something that parses the same.
		out, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		j2, err := ParseJournal(out)
		if err != nil || *j2 != *j {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzParseBootEnv(f *testing.F) {
	b, _ := (&BootEnv{Seq: 9, Active: SlotA, Try: SlotB, UpgradeAvailable: true, BootCount: 1, BootLimit: 2}).MarshalBinary()
	f.Add(b)
	f.Add(make([]byte, bootEnvSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseBootEnv(b)
		if err != nil {
			return
		}
		out, err := e.MarshalBinary()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("round trip differs: %v", err)
		}
	})
}

func FuzzParseCustom(f *testing.F) {
	f.Add([]byte(`{"hardwareId":"board","releaseCounter":3,"securityVersion":2,"release":"fw@1","kind":"image"}`))
	f.Add([]byte(`{"kind":"delta","deltaFrom":"a","deltaTarget":"b"}`))
	f.Add([]byte(`{"releaseCounter":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tg, err := ParseCustom(b)
		if err != nil {
			return
		}
		if tg.Kind == "delta" && (tg.DeltaFrom == "" || tg.DeltaTarget == "") {
			t.Fatal("delta without base or target accepted")
		}
	})
}

func FuzzParseFloorLog(f *testing.F) {
	key := bytes.Repeat([]byte{1}, 32)
	fsys := newFaultFS(1)
	fl, _ := NewLogFloor(fsys, key)
	fl.Raise(1)
	fl.Raise(5)
	f.Add(fsys.read(floorLogName))
	f.Add([]byte("ward-floor-v1 00\n1 00\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		versions, _, err := ParseFloorLog(b, key)
		if err != nil {
			return
		}
		for i := 1; i < len(versions); i++ {
			if versions[i] <= versions[i-1] {
				t.Fatal("non-increasing floor log accepted")
			}
		}
	})
}

func FuzzApplyDelta(f *testing.F) {
	base, target := images(3, 8<<10)
	f.Add(makeDelta(f, base, target, 0))
	f.Add(makeDelta(f, base, target, 7))
	f.Fuzz(func(t *testing.T, patch []byte) {
		var out bytes.Buffer
		limit := int64(len(target))
		n, err := ApplyDelta(&out, bytes.NewReader(patch), base, limit)
		if err == nil && n > limit {
			t.Fatalf("wrote %d bytes past the limit %d", n, limit)
		}
		if int64(out.Len()) > limit {
			t.Fatalf("output %d bytes, limit %d", out.Len(), limit)
		}
		io.Copy(io.Discard, &out)
	})
}
