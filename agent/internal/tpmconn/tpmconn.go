// Package tpmconn opens a TPM 2.0 command channel: a kernel device
// (/dev/tpmrm0) or the TCP command port of swtpm (tcp://host:port).
//
// go-tpm's own transport/tcp speaks the Microsoft simulator protocol, which
// wraps each command in a session header; swtpm's --server type=tcp port
// takes raw TPM commands instead, so this package frames them itself: write
// the command, read the 10-byte response header, then the size it declares.
package tpmconn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

const (
	// headerSize is tag(2) + responseSize(4) + responseCode(4).
	headerSize = 10
	// maxResponseSize bounds what we read from a TCP peer we do not
	// control. TPMs cap responses at MAX_RESPONSE_SIZE, 4096 bytes on
	// common parts; 64 KiB leaves room for unusual firmware.
	maxResponseSize = 64 << 10
	// commandTimeout bounds one command on a TCP TPM. Generous: RSA primary
	// key generation on slow TPMs takes tens of seconds.
	commandTimeout = 2 * time.Minute
	// dialTimeout bounds connecting to a TCP TPM.
	dialTimeout = 10 * time.Second
	// maxRetries bounds resubmitting a command the TPM asked to retry
	// (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING), as tpm2-tss does;
	// a TPM that keeps asking is broken, not busy.
	maxRetries = 8
	// firstBackoff is the pause before the first resubmission, doubled
	// each time (about 0.25 s in total).
	firstBackoff = time.Millisecond
)

// Response codes after which TPM 2.0 Part 1 says to resubmit the command.
const (
	rcRetry   = 0x922 // TPM_RC_RETRY
	rcYielded = 0x908 // TPM_RC_YIELDED
	rcTesting = 0x90A // TPM_RC_TESTING: a self test of the algorithm is running
)

// Open opens the TPM at path: "tcp://HOST:PORT" for swtpm's command port,
// otherwise a device file such as /dev/tpmrm0. Commands the TPM asks to
// resubmit are resubmitted.
func Open(path string) (transport.TPMCloser, error) {
	if addr, ok := strings.CutPrefix(path, "tcp://"); ok {
		conn, err := net.DialTimeout("tcp", addr, dialTimeout)
		if err != nil {
			return nil, fmt.Errorf("connect to TPM at %s: %w", addr, err)
		}
		return Retrying(&TCP{conn: conn}), nil
	}
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open TPM device: %w", err)
	}
	return Retrying(t), nil
}

// Retrying wraps t so that commands answered with TPM_RC_RETRY,
// TPM_RC_YIELDED or TPM_RC_TESTING are resubmitted. A TPM that has just
// started runs algorithm self tests lazily and answers the first command
// using an algorithm this way; go-tpm's tpm2 package does not retry.
func Retrying(t transport.TPMCloser) transport.TPMCloser { return retrying{t, time.Sleep} }

type retrying struct {
	transport.TPMCloser
	sleep func(time.Duration) // injected so tests do not wait
}

func (r retrying) Send(cmd []byte) ([]byte, error) {
	backoff := firstBackoff
	for i := 0; ; i++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil || len(rsp) < headerSize || i == maxRetries {
			return rsp, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcRetry, rcYielded, rcTesting:
			r.sleep(backoff)
			backoff *= 2
		default:
			return rsp, nil
		}
	}
}

// TCP is a TPM reached over swtpm's raw TCP command port. It implements
// go-tpm's transport.TPMCloser.
type TCP struct {
	mu   sync.Mutex // one command in flight at a time on the socket
	conn net.Conn
}

// Send sends one command and returns the whole response.
func (t *TCP) Send(cmd []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, err
	}
	if _, err := t.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("TPM write: %w", err)
	}
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(t.conn, hdr); err != nil {
		return nil, fmt.Errorf("TPM read header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxResponseSize {
		return nil, fmt.Errorf("TPM response declares %d bytes, want %d to %d", size, headerSize, maxResponseSize)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(t.conn, rsp[headerSize:]); err != nil {
		return nil, fmt.Errorf("TPM read body: %w", err)
	}
	return rsp, nil
}

// Close closes the connection. Transient objects stay in swtpm until
// flushed or until it restarts: there is no resource manager on this path.
func (t *TCP) Close() error {
	if t == nil || t.conn == nil {
		return errors.New("tpmconn: not open")
	}
	return t.conn.Close()
}
