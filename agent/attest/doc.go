// Package attest is the device side of Ward's remote attestation.
//
// With a TPM 2.0 ([Open]): the agent keeps an attestation key (AK) made by
// go-attestation under the TPM's storage root key, saved as a TPM-wrapped
// blob in its state directory. It enrolls the AK once
// ([TPM.AKEnrollRequest], then [TPM.ActivateCredential] proves the AK and
// the certified EK live in the same TPM) and answers each server
// challenge with [TPM.Attest]: quotes over the PCRs with the server's
// nonce plus the TCG event log from a [MeasuredBoot].
//
// [KernelLog] reads the log firmware left for the kernel and never
// extends anything. [SimulatedBoot] is for devices without measured boot
// and for tests: it extends the boot stages' digests into the TPM and
// writes the matching crypto-agile event log.
//
// Without a TPM, [SoftwareEvidence] signs a report of the A/B slot hashes
// with the device key: the low-assurance tier.
package attest
