// Package keystore holds a device's private keys behind [crypto.Signer].
//
// Three backends share one contract, the [Keystore] interface:
//
//   - file: one PKCS#8 PEM file per key in a 0700 directory, each file 0600,
//     written atomically, optionally sealed with a device-unique key
//     (AES-256-GCM). Software keys: use it when the device has nothing
//     better.
//   - pkcs11: keys generated inside a PKCS#11 token (a secure element, an
//     HSM, SoftHSM), marked sensitive and non-extractable, found by label.
//     Requires cgo.
//   - tpm: keys created by a TPM 2.0 under its storage primary key. Only the
//     TPM-wrapped blobs are kept on disk; they are useless outside the TPM
//     that made them.
//
// Keys are named so that a renewal can hold the old and the new key side by
// side ("device-1", "device-2") and delete the old one only after the new
// certificate is in hand.
//
// A keystore is chosen by a spec string, see [Open] and [ParseSpec]:
//
//	file:/var/lib/ward-agent/keys
//	pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=ward;pin-source=/etc/ward/pin
//	tpm:/dev/tpmrm0
//	tpm:tcp://127.0.0.1:2321
package keystore
