package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/wire"
)

// renewalAttestTimeout bounds waiting for the verdict on a renewal
// attestation: a quote takes milliseconds, verification less.
const renewalAttestTimeout = 30 * time.Second

// attestServer answers the server's attestation messages on one session.
type attestServer struct {
	c   *Conn
	tpm *attest.TPM

	tpmMu sync.Mutex // the TPM answers one command at a time

	// The renewal in progress, if any: its key, the challenge bound to
	// it, and where its verdict or failure goes.
	mu        sync.Mutex
	spki      []byte
	renewalID string
	verdicts  chan wire.AttestVerdict
	renewErr  chan error
}

// ServeAttestation makes this session answer attestation with t: it
// subscribes to the device's attestation topics, asks the server to
// enroll t's AK (an operator approves; the credential activation that
// follows is answered here), answers every challenge with a quote, and
// makes the agent's renewals attest first: before simplereenroll the
// agent sends the new key's public key on attest/renewal, answers the
// challenge bound to it and waits for a pass. Call it once per session;
// renewals attest over the latest session that called it.
func (c *Conn) ServeAttestation(t *attest.TPM) error {
	s := &attestServer{c: c, tpm: t}
	if err := c.Subscribe(wire.TopicAttestRequest, s.onChallenge); err != nil {
		return err
	}
	if err := c.Subscribe(wire.TopicAttestActivation, s.onActivation); err != nil {
		return err
	}
	if err := c.Subscribe(wire.TopicAttestVerdict, s.onVerdict); err != nil {
		return err
	}
	s.tpmMu.Lock()
	req, err := t.AKEnrollRequest()
	s.tpmMu.Unlock()
	if err != nil {
		return err
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if err := c.Publish(wire.TopicAttestEnroll, b, 1); err != nil {
		return err
	}
	c.a.mu.Lock()
	c.a.renewalAttest = s.attestRenewal
	c.a.mu.Unlock()
	return nil
}

func (s *attestServer) onChallenge(_ string, payload []byte) {
	ch, err := wire.ParseAttestChallenge(payload)
	if err != nil {
		s.c.a.log.Warn("attestation: bad challenge", "err", err)
		return
	}
	if len(ch.ServerNonce) > 0 {
		// A renewal challenge: answer only if it binds the key this agent
		// is renewing with, so a quote is never spent on another key.
		s.mu.Lock()
		ok := s.spki != nil && attest.CheckRenewalBinding(ch, s.spki) == nil
		if ok {
			s.renewalID = ch.ID
		}
		s.mu.Unlock()
		if !ok {
			s.c.a.log.Warn("attestation: refused a renewal challenge that does not bind the key being renewed")
			return
		}
	}
	s.tpmMu.Lock()
	reply, err := s.tpm.Respond(payload)
	s.tpmMu.Unlock()
	if err != nil {
		s.c.a.log.Warn("attestation: could not answer a challenge", "err", err)
		s.fail(ch.ID, err)
		return
	}
	if err := s.c.Publish(wire.TopicAttestReply, reply, 1); err != nil {
		s.c.a.log.Warn("attestation: could not send evidence", "err", err)
		s.fail(ch.ID, err)
	}
}

// fail tells a renewal waiting on challenge id that it will not get a
// verdict.
func (s *attestServer) fail(id string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.renewErr != nil && id == s.renewalID {
		select {
		case s.renewErr <- fmt.Errorf("challenge %s: %w", id, err):
		default:
		}
	}
}

func (s *attestServer) onActivation(_ string, payload []byte) {
	ch, err := wire.ParseAKActivationChallenge(payload)
	if err != nil {
		s.c.a.log.Warn("attestation: bad activation challenge", "err", err)
		return
	}
	s.tpmMu.Lock()
	resp, err := s.tpm.ActivateCredential(ch)
	s.tpmMu.Unlock()
	if err != nil {
		s.c.a.log.Warn("attestation: credential activation failed", "err", err)
		return
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return
	}
	if err := s.c.Publish(wire.TopicAttestActivate, b, 1); err != nil {
		s.c.a.log.Warn("attestation: could not send the activation answer", "err", err)
	}
}

func (s *attestServer) onVerdict(_ string, payload []byte) {
	v, err := wire.ParseAttestVerdict(payload)
	if err != nil {
		return
	}
	s.c.a.log.Info("attestation verdict", "result", v.Result, "reasons", v.Reasons, "release", v.Release)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.verdicts != nil && v.ChallengeID == s.renewalID {
		select {
		case s.verdicts <- *v:
		default:
		}
	}
}

// ErrAttestationRefused wraps a renewal attestation that did not pass.
var ErrAttestationRefused = errors.New("attestation did not pass")

// attestRenewal asks for a challenge bound to spki, answers it and waits
// for the verdict.
func (s *attestServer) attestRenewal(ctx context.Context, spki []byte) error {
	verdicts := make(chan wire.AttestVerdict, 4)
	errs := make(chan error, 1)
	s.mu.Lock()
	s.spki, s.renewErr, s.verdicts, s.renewalID = spki, errs, verdicts, ""
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.spki, s.renewErr, s.verdicts, s.renewalID = nil, nil, nil, ""
		s.mu.Unlock()
	}()
	b, err := json.Marshal(&wire.AttestRenewalRequest{SPKI: spki})
	if err != nil {
		return err
	}
	if err := s.c.Publish(wire.TopicAttestRenewal, b, 1); err != nil {
		return err
	}
	timer := time.NewTimer(renewalAttestTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return errors.New("attestation for renewal: no verdict from the server")
		case err := <-errs:
			return fmt.Errorf("attestation for renewal: %w", err)
		case v := <-verdicts:
			if v.Result == wire.VerdictPass {
				return nil
			}
			return fmt.Errorf("attestation for renewal: %w: %s %v", ErrAttestationRefused, v.Result, v.Reasons)
		}
	}
}

// spkiOf returns the DER SubjectPublicKeyInfo of a public key.
func spkiOf(pub any) ([]byte, error) { return x509.MarshalPKIXPublicKey(pub) }
