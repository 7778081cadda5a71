package est

import "crypto/tls"

// ConfigureTLS prepares cfg for serving EST: it asks clients for a
// certificate without requiring or verifying one (tls.RequestClientCert),
// unless cfg already requests client certificates in some way, and raises
// MinVersion to TLS 1.2 (RFC 7030 §3.3.1 requires at least 1.1; Ward
// accepts nothing below 1.2).
//
// RequestClientCert leaves chain verification to the CA (see [CA]): the
// TLS layer still checks the client's CertificateVerify, so the handler
// knows the client holds the leaf's key. If the server instead uses
// tls.VerifyClientCertIfGiven with ClientCAs, the chain has also been
// verified against that pool, but the CA must still map it to a tenant and
// check revocation and device state.
func ConfigureTLS(cfg *tls.Config) {
	if cfg.ClientAuth == tls.NoClientCert {
		cfg.ClientAuth = tls.RequestClientCert
	}
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
}
