package tpmconn

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func header(size, rc uint32) []byte {
	h := make([]byte, headerSize)
	binary.BigEndian.PutUint16(h, 0x8001)
	binary.BigEndian.PutUint32(h[2:], size)
	binary.BigEndian.PutUint32(h[6:], rc)
	return h
}

// fakeTPM answers each command read from conn with the next response.
func fakeTPM(t testing.TB, responses ...[]byte) (*TCP, *int) {
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	commands := new(int)
	go func() {
		buf := make([]byte, 4096)
		for _, r := range responses {
			if _, err := server.Read(buf); err != nil {
				return
			}
			*commands++
			if _, err := server.Write(r); err != nil {
				return
			}
		}
		server.Close()
	}()
	return &TCP{conn: client}, commands
}

func TestTCPFraming(t *testing.T) {
	body := []byte("response-body")
	ok := append(header(uint32(headerSize+len(body)), 0), body...)
	for name, c := range map[string]struct {
		rsp     []byte
		wantErr bool
	}{
		"ok":                {ok, false},
		"fail/too-big":      {header(maxResponseSize+1, 0), true},
		"fail/too-small":    {header(headerSize-1, 0), true},
		"fail/truncated":    {append(header(100, 0), 1, 2, 3), true},
		"fail/short-header": {[]byte{0x80, 0x01, 0}, true},
	} {
		t.Run(name, func(t *testing.T) {
			tpm, _ := fakeTPM(t, c.rsp)
			got, err := tpm.Send([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b})
			if c.wantErr {
				if err == nil {
					t.Fatalf("accepted %x", c.rsp)
				}
				return
			}
			if err != nil || !bytes.Equal(got, c.rsp) {
				t.Fatalf("got %x, %v", got, err)
			}
		})
	}
}

func TestRetryingResubmits(t *testing.T) {
	final := header(headerSize, 0)
	tpm, commands := fakeTPM(t, header(headerSize, rcRetry), header(headerSize, rcTesting), header(headerSize, rcYielded), final)
	got, err := noWait(tpm).Send([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b})
	if err != nil || !bytes.Equal(got, final) {
		t.Fatalf("got %x, %v", got, err)
	}
	if *commands != 4 {
		t.Fatalf("TPM saw %d commands, want 4", *commands)
	}
}

func TestRetryingGivesUp(t *testing.T) {
	var rs [][]byte
	for range maxRetries + 1 {
		rs = append(rs, header(headerSize, rcRetry))
	}
	tpm, commands := fakeTPM(t, rs...)
	got, err := noWait(tpm).Send([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b})
	if err != nil || binary.BigEndian.Uint32(got[6:]) != rcRetry {
		t.Fatalf("got %x, %v; want the last TPM_RC_RETRY passed up", got, err)
	}
	if *commands != maxRetries+1 {
		t.Fatalf("TPM saw %d commands, want %d", *commands, maxRetries+1)
	}
}

func FuzzTCPResponse(f *testing.F) {
	f.Add(append(header(headerSize+2, 0), 1, 2))
	f.Add(header(maxResponseSize+1, 0))
	f.Fuzz(func(t *testing.T, rsp []byte) {
		tpm, _ := fakeTPM(t, rsp)
		got, err := tpm.Send([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b})
		if err != nil {
			return
		}
		if len(got) < headerSize || len(got) > maxResponseSize || int(binary.BigEndian.Uint32(got[2:6])) != len(got) {
			t.Fatalf("returned %d bytes not matching the header", len(got))
		}
		if !bytes.HasPrefix(rsp, got) {
			t.Fatal("returned bytes the peer did not send")
		}
	})
}

var _ io.Closer = (*TCP)(nil)

func noWait(t *TCP) retrying { return retrying{t, func(time.Duration) {}} }
