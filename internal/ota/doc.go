// Package ota is the server side of Ward's secure updates (Uptane-style,
// two TUF repositories; contract in wire/ota.go):
//
//   - [Image]: every release of every hardware model. Root and targets
//     keys may be offline: [Image.Publish] stores the files and stages
//     targets metadata; `ward release sign` signs the exported bytes with
//     tufrepo.Sign and a key file or crypto.Signer; [Image.Commit] imports
//     them only if the signatures meet the targets threshold. Snapshot and
//     timestamp keys are online, sealed at rest (tufrepo.OnlineKey).
//   - [Director]: one repository per device, online keys, short expiry,
//     naming exactly the image the device must install with the tenant's
//     minSecurityVersion; it never assigns below the device's reported
//     anti-rollback floor and reports a floor that went down.
//   - Deltas (package delta) from each earlier release of a model, as their
//     own targets with deltaFrom/deltaTarget.
//   - [Handler]: both repositories over HTTP with Range support.
//
// Rollout decisions live in package rollout, a pure state machine.
package ota
