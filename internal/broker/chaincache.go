package broker

import (
	"crypto/x509"
	"sync"
	"time"
)

// maxChainCache bounds the verified chains remembered (about 200 bytes
// each); when full the cache starts over rather than grow.
const maxChainCache = 200_000

// chainCache remembers client certificates whose chain to an issuing CA
// has been verified, so a device that reconnects does not pay again for
// chain building and the CA's signature check (about a seventh of a
// connect's CPU). Only time can change the outcome for the same leaf, the
// same issuer and the same pool, so an entry records the chain's validity
// window and the pool it was verified against; a new pool from Trust (a
// tenant added or removed) misses. Proof of possession of the key is part
// of every handshake and never cached.
type chainCache struct {
	mu sync.Mutex
	m  map[[32]byte]chainEntry
}

type chainEntry struct {
	pool      *x509.CertPool
	issuer    *x509.Certificate
	notBefore time.Time
	notAfter  time.Time
}

func newChainCache() *chainCache {
	return &chainCache{m: make(map[[32]byte]chainEntry)}
}

// lookup returns the issuer of a leaf verified earlier against pool, if the
// whole chain is still valid at now.
func (c *chainCache) lookup(leaf [32]byte, pool *x509.CertPool, now time.Time) (*x509.Certificate, bool) {
	c.mu.Lock()
	e, ok := c.m[leaf]
	c.mu.Unlock()
	if !ok || e.pool != pool || now.Before(e.notBefore) || now.After(e.notAfter) {
		return nil, false
	}
	return e.issuer, true
}

// store records a verified two-certificate chain (leaf, issuing CA).
func (c *chainCache) store(leaf [32]byte, pool *x509.CertPool, chain []*x509.Certificate) {
	if len(chain) != 2 {
		return
	}
	e := chainEntry{pool: pool, issuer: chain[1], notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	if chain[1].NotBefore.After(e.notBefore) {
		e.notBefore = chain[1].NotBefore
	}
	if chain[1].NotAfter.Before(e.notAfter) {
		e.notAfter = chain[1].NotAfter
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxChainCache {
		clear(c.m)
	}
	c.m[leaf] = e
}
