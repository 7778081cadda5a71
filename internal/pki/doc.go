// Package pki runs Ward's per-tenant certificate authorities.
//
// Each tenant has a root CA (long-lived, meant to be taken offline) and an
// issuing CA that signs device and server certificates through a small set
// of issuance profiles. CA keys live behind a [KeyManager]: sealed PKCS#8
// in the database (file mode) or non-extractable keys inside a PKCS#11
// token (see package pkcs11). Every issued certificate is recorded in the
// [Store] before it is handed out, so revocation, CRLs and OCSP always know
// about it.
//
// Revocation state is kept in memory in a [RevocationSet] that the MQTT
// gateway consults on every connect. The [Authority] publishes a signed CRL
// per issuing CA and answers OCSP (RFC 6960) with a delegated responder
// certificate; both are served over plain HTTP by [Authority.Handler].
package pki
