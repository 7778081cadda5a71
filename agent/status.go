package agent

import (
	"crypto/x509"
	"fmt"
	"time"
)

// Status describes the agent's credential and renewal schedule.
type Status struct {
	Tenant       string    `json:"tenant"`
	Device       string    `json:"device"`
	Server       string    `json:"server"`
	KeystoreKind string    `json:"keystore"`
	KeyName      string    `json:"key"`
	Generation   uint64    `json:"generation"`
	Serial       string    `json:"serial"` // hexadecimal
	Issuer       string    `json:"issuer"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	EnrolledAt   time.Time `json:"enrolled_at"`
	RenewedAt    time.Time `json:"renewed_at,omitzero"`
	// NextRenewal is when the next renewal attempt is due. From
	// [ReadStatus] it is the nominal time, without jitter or backoff.
	NextRenewal time.Time `json:"next_renewal"`
	// Expired reports whether NotAfter has passed.
	Expired bool `json:"expired"`
	// ConsecutiveFailures counts renewal attempts failed since the last
	// success; LastError is the latest one's message.
	ConsecutiveFailures int    `json:"consecutive_failures,omitempty"`
	LastError           string `json:"last_error,omitempty"`
}

// Status reports the current credential and schedule.
func (a *Agent) Status() Status {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := statusOf(a.st, now)
	s.NextRenewal = a.next
	s.ConsecutiveFailures = a.failures
	if a.lastErr != nil {
		s.LastError = a.lastErr.Error()
	}
	return s
}

// ReadStatus reports the identity saved in stateDir without opening the
// keystore or contacting the server, for a status command run next to a
// running agent.
func ReadStatus(stateDir string, now time.Time) (Status, error) {
	st, err := readState(stateDir)
	if err != nil {
		return Status{}, fmt.Errorf("agent: %w", err)
	}
	s := statusOf(st, now)
	s.NextRenewal = renewalTime(st.leaf(), 0)
	return s, nil
}

func statusOf(st *state, now time.Time) Status {
	leaf := st.leaf()
	return Status{
		Tenant: st.Tenant, Device: st.Device, Server: st.Server,
		KeystoreKind: st.Keystore, KeyName: st.Key, Generation: st.Generation,
		Serial: serialHex(leaf), Issuer: leaf.Issuer.String(),
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
		EnrolledAt: st.EnrolledAt, RenewedAt: st.RenewedAt,
		Expired: now.After(leaf.NotAfter),
	}
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }
