// Package attest is the server side of remote attestation: challenges,
// AK enrollment by TPM credential activation, verification of TPM quotes
// and event logs against signed reference values, the software tier,
// freshness rules on the TPM clock, and the policy decisions that follow
// (quarantine, renewal gating).
//
// Verification of TPM evidence runs in this order, each step relying only
// on what the previous ones established:
//
//  1. the evidence names the AK enrolled for the device, no other;
//  2. the quotes verify with that AK and carry the challenge's nonce;
//  3. only quote-verified SHA-256 PCRs are used from here on;
//  4. the event log replays to those PCRs (go-attestation);
//  5. every policy PCR has events (a replay passes PCRs without events);
//  6. every event digest on a policy PCR is a reference digest of the
//     release (digests only: event types and data are not signed);
//  7. every reference stage was measured;
//  8. the TPM's counters never go down and its clock advances unless a
//     counter moved; Safe=0 (power loss) is flagged, not failed.
//
// Steps 5 to 7 run against the device's current release, then against the
// previous approved one.
//
// Wiring, for the server:
//
//   - Configuration: New(Config{Store, EKRoots, EKIntermediates, RefKeys,
//     Now}). EKRoots are the TPM manufacturers' roots the operator
//     registers; RefKeys gives each tenant's reference-value key.
//   - Releases: ImportRefValues(tenant, doc, sig) when a release's
//     reference values are published (TUF custom metadata, kind
//     "refvalues"). Importing approves the release for appraisal.
//   - Enrollment (once per TPM device, after its certificate is issued):
//     BeginAKEnrollment with the device's wire.AKEnrollRequest, send the
//     wire.AKActivationChallenge, FinishAKEnrollment with its answer.
//   - Schedule: for each device, Due; if due, NewChallenge and publish it
//     on ward/v1/<device>/attest/request; on ward/v1/<device>/attest/reply
//     parse with wire.ParseAttestEvidence and call Verify. ErrChallenge:
//     drop and log. A Verdict: record a security event if not Pass, and if
//     Verdict.Quarantine, the gateway confines the device to its attest and
//     OTA topics until a later Verify passes.
//   - Renewal: before simplereenroll the agent asks for RenewalChallenge
//     with its new key's SPKI; the EST handler calls RenewalAllowed(device,
//     csrSPKI, now) and refuses the CSR on error.
package attest
