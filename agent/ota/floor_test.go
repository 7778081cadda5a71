package ota

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/wardiot/ward/agent/internal/peertest"
	"github.com/wardiot/ward/agent/internal/tpmconn"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
)

func TestLogFloor(t *testing.T) {
	fsys := newFaultFS(1)
	key := bytes.Repeat([]byte{1}, 32)
	fl, err := NewLogFloor(fsys, key)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fl.Floor(); err != nil || v != 0 || fl.Head() != "" {
		t.Fatalf("empty floor = %d, %v, head %q", v, err, fl.Head())
	}
	for _, v := range []uint64{1, 3, 2, 3} {
		if err := fl.Raise(v); err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := fl.Floor(); v != 3 {
		t.Fatalf("floor = %d, want 3 (never lowered)", v)
	}
	head := fl.Head()
	versions, parsedHead, err := ParseFloorLog(fsys.read(floorLogName), key)
	if err != nil || parsedHead != head || len(versions) != 2 {
		t.Fatalf("ParseFloorLog = %v, %q, %v", versions, parsedHead, err)
	}
	fl.Raise(4)
	if fl.Head() == head {
		t.Fatal("head did not move")
	}

	t.Run("fail/tampered", func(t *testing.T) {
		b := fsys.read(floorLogName)
		fsys.files[floorLogName].data = bytes.Replace(b, []byte("\n4 "), []byte("\n1 "), 1)
		if _, err := fl.Floor(); err == nil || !strings.Contains(err.Error(), "chain broken") {
			t.Fatalf("Floor of a rewritten log = %v", err)
		}
		fsys.files[floorLogName].data = b
	})
	t.Run("fail/wrong-key", func(t *testing.T) {
		other, _ := NewLogFloor(fsys, bytes.Repeat([]byte{2}, 32))
		if _, err := other.Floor(); err == nil {
			t.Fatal("another key verified the log")
		}
	})
	t.Run("fail/short-key", func(t *testing.T) {
		if _, err := NewLogFloor(fsys, []byte("short")); err == nil {
			t.Fatal("accepted a short key")
		}
	})
	t.Run("compaction", func(t *testing.T) {
		for v := uint64(5); v < 5+2*maxFloorEntries; v++ {
			if err := fl.Raise(v); err != nil {
				t.Fatal(err)
			}
		}
		want := uint64(4 + 2*maxFloorEntries)
		if v, err := fl.Floor(); err != nil || v != want {
			t.Fatalf("floor = %d, %v, want %d", v, err, want)
		}
		if n := bytes.Count(fsys.read(floorLogName), []byte("\n")); n > maxFloorEntries+1 {
			t.Fatalf("log has %d lines after compaction", n)
		}
	})
}

// TestTPMFloor runs the floor on swtpm: a real TPM 2.0 NV counter.
func TestTPMFloor(t *testing.T) {
	sim := tpmtest.StartSim(t)
	tpm, err := tpmconn.Open("tcp://" + sim.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	fl, err := OpenTPMFloor(tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	start, err := fl.Floor()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fresh counter reads %d", start)
	if err := fl.Raise(start + 3); err != nil {
		t.Fatal(err)
	}
	if v, _ := fl.Floor(); v != start+3 {
		t.Fatalf("floor = %d, want %d", v, start+3)
	}
	if err := fl.Raise(1); err != nil {
		t.Fatal(err)
	}
	if v, _ := fl.Floor(); v != start+3 {
		t.Fatalf("Raise lowered the floor to %d", v)
	}
	if err := fl.Raise(start + 3 + maxFloorStep + 1); err == nil {
		t.Fatal("accepted a jump past maxFloorStep")
	}

	// The attributes are what we asked for.
	pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(DefaultFloorIndex)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := pub.NVPublic.Contents()
	if p.Attributes.NT != tpm2.TPMNTCounter || !p.Attributes.OwnerWrite || !p.Attributes.OwnerRead || !p.Attributes.NoDA || !p.Attributes.Written {
		t.Fatalf("attributes = %+v", p.Attributes)
	}

	// An ordinary write to a counter is refused by the TPM itself.
	_, err = tpm2.NVWrite{AuthHandle: tpm2.TPMRHOwner,
		NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(DefaultFloorIndex), Name: pub.NVName},
		Data:    tpm2.TPM2BMaxNVBuffer{Buffer: make([]byte, 8)}}.Execute(tpm)
	if err == nil {
		t.Fatal("TPM accepted NV_Write to the counter")
	}

	// Deleting the index and defining it again does not lower the floor.
	before, _ := fl.Floor()
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner,
		NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(DefaultFloorIndex), Name: pub.NVName}}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	fl2, err := OpenTPMFloor(tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	after, err := fl2.Floor()
	if err != nil {
		t.Fatal(err)
	}
	if after < before {
		t.Fatalf("floor went from %d to %d after undefine/redefine", before, after)
	}
	t.Logf("floor %d before undefine, %d after redefine", before, after)

	// An ordinary NV index planted at the floor's index is refused.
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner,
		NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(DefaultFloorIndex), Name: mustPublic(t, tpm).NVName}}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
		NVIndex: tpm2.TPMHandle(DefaultFloorIndex), NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, NoDA: true, NT: tpm2.TPMNTOrdinary}, DataSize: 8,
	})}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenTPMFloor(tpm, 0); err == nil || !strings.Contains(err.Error(), "not a floor counter") {
		t.Fatalf("OpenTPMFloor on an ordinary index = %v", err)
	}
}

func mustPublic(t *testing.T, tpm interface {
	Send([]byte) ([]byte, error)
}) *tpm2.NVReadPublicResponse {
	t.Helper()
	pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(DefaultFloorIndex)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestTPMFloorReadByTPM2Tools checks the counter with tpm2-tools, code no
// one here wrote: the value it reads is the floor.
func TestTPMFloorReadByTPM2Tools(t *testing.T) {
	peertest.Require(t, "tpm2_nvread", "tpm2-tools")
	sim := tpmtest.StartSim(t)
	tpm, err := tpmconn.Open("tcp://" + sim.Addr)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := OpenTPMFloor(tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := fl.Raise(7); err != nil {
		t.Fatal(err)
	}
	tpm.Close() // swtpm serves one connection at a time
	cmd := exec.Command("tpm2_nvread", "-C", "o", "-s", "8", fmt.Sprintf("%#x", DefaultFloorIndex))
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sim.TCTI())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tpm2_nvread: %v", err)
	}
	if len(out) != 8 || binary.BigEndian.Uint64(out) != 7 {
		t.Fatalf("tpm2_nvread read %x, want 7", out)
	}
	cmd = exec.Command("tpm2_nvreadpublic", fmt.Sprintf("%#x", DefaultFloorIndex))
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sim.TCTI())
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_nvreadpublic: %v\n%s", err, out)
	}
	for _, want := range []string{"ownerwrite", "ownerread", "no_da", "nt=0x1"} {
		if !strings.Contains(strings.ToLower(string(out)), want) {
			t.Fatalf("tpm2_nvreadpublic lacks %q:\n%s", want, out)
		}
	}
}

func TestEngineRaisesTPMFloorOnCommit(t *testing.T) {
	sim := tpmtest.StartSim(t)
	tpm, err := tpmconn.Open("tcp://" + sim.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	fl, err := OpenTPMFloor(tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := newFleet(t, false)
	d := newDevice(t, f, 1)
	d.floor = fl
	e := d.update(job2)
	if j := e.Journal(); j.Phase != PhaseCommitted {
		t.Fatalf("journal = %+v", j)
	}
	if v, _ := fl.Floor(); v != 2 {
		t.Fatalf("TPM floor = %d, want 2", v)
	}
	if st := e.Status(); st.Floor != 2 || st.FloorHead != "" {
		t.Fatalf("status = %+v", st)
	}
}
