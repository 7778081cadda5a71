// Package provision is zero-touch provisioning: enrollment groups,
// bootstrap-credential authenticators, provisioning templates,
// just-in-time registration and claiming.
//
// # Labels
//
// The EST label selects the enrollment group: "<tenant>.<group>" names one
// group; "<tenant>" tries the tenant's enabled groups whose mechanism
// matches the credential presented, in name order, at most
// MaxLabelCandidates of them, and the first that authenticates the
// device wins. The mechanism is read from the credential's form: a bearer
// token with a wire prefix (symmetric key, group token, TPM response) or,
// with no bearer token, a TLS client certificate (manufacturer x509).
//
// # Mechanisms
//
// One folder each, all implementing [Authenticator]: x509pop
// (manufacturer certificates), tpmek (TPM endorsement key with credential
// activation and a TPM-certified CSR key, two rounds through
// [Provisioner.Challenge]), symkey (per-device keys derived from a group
// key) and jointoken (one-time tokens scoped to a group and a device).
//
// # Flow
//
// [Provisioner.Enroll] authenticates, checks that the CSR names the
// proven device, refuses a second onboarding of a device ID unless the
// group allows re-provisioning, asks the group's webhook, applies the
// template and creates the device record. The caller issues the
// certificate. Every refusal is an [*Error] with a [Reason], and is
// reported to [Events] and [Auditor] before Enroll returns; devices must be
// told only that enrollment was refused.
//
// Bootstrap credentials are for enrollment only: the MQTT gateway refuses
// certificates that [IsBootstrapCertificate] recognises.
package provision
