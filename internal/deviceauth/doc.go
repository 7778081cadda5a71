// Package deviceauth lets devices that post over HTTPS, instead of holding
// an MQTT session, authenticate with OAuth 2.0 tokens.
//
// A device proves possession of its certificate key at the token endpoint
// (POST /oauth/token) with the client credentials grant (RFC 6749 §4.4)
// and private_key_jwt client authentication (RFC 7523 §2.2, OpenID Connect
// Core §9): a JWT signed with the key of its current certificate (ES256 for
// P-256, ES384 for P-384, EdDSA for Ed25519, PS256 or RS256 for RSA) whose
// iss and sub are its client ID "<tenant>/<device>" (wire.DeviceClientID),
// whose aud is the token endpoint's URL, that lives at most
// [MaxAssertionLifetime] and whose jti is never used twice (checked in
// process and in the shared [Store], so a replay to another node fails
// too).
//
// It receives an opaque access token (256 random bits, stored only as a
// SHA-256 hash, [DefaultAccessTokenLifetime]) and a refresh token. Both are
// bound to the device and to the certificate serial the assertion was
// verified under: revoking that certificate, or disabling the device,
// refuses them at once. Refresh tokens rotate on every use; presenting one
// that was already used revokes its whole family (every access and refresh
// token descended from the same grant), raises a security event and writes
// an audit entry, because one of the two presenters holds a stolen copy.
//
// The access token opens the device API: [Server.Middleware] and
// [Server.Authenticate] for any handler, and [Server.TelemetryHandler]
// for POST /api/device/v1/telemetry/<stream>, which hands COSE envelopes
// to the same verifier as MQTT publishes.
//
// The JWS parser is written here rather than taken from a general JOSE
// library so that it accepts exactly one shape: compact serialization,
// unpadded strict base64url, duplicate-free JSON, the header parameters
// alg, typ and kid only (never jwk, jku, x5u, x5c or crit: the key comes
// from the certificate store), and only the algorithm that fits the
// device's key type. No MAC algorithm exists in it, so the HS256
// key-confusion attack has nothing to reach.
//
// The device side is agent/httpauth.
package deviceauth
