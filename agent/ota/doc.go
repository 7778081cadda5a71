// Package ota installs firmware updates on a device without ever bricking
// it: it agrees the update with two TUF repositories, downloads it
// resumably, writes the inactive A/B slot, boots it on trial and commits
// only after a health gate, rolling back otherwise.
//
// # Trust
//
// [Client] follows the Uptane split. The Image repository (offline root
// and targets keys) holds every release with its hardware model, release
// counter and security version; the device's Director repository (online
// keys) names what this device should install. [Client.Resolve] refreshes
// both with go-tuf and then checks that they agree on everything that
// matters, field by field: go-tuf's own multi-repository support compares
// only length and one hash and ignores custom fields, so it would accept a
// Director target for another hardware model. Files are downloaded from the
// Image repository only.
//
// # Installing
//
// [Engine] is a journaled state machine (Mender's states under other
// names):
//
//	downloading -> downloaded -> installing -> installed -> rebooting
//	    -> trial -> committed | rolled_back          (or failed)
//
// Every write goes through [FS], so tests can cut the power at any write:
// the journal (state.json) is replaced atomically, the boot environment is
// kept in two copies with sequence numbers and CRC32 (like U-Boot's
// redundant environment), and the slot is read back and hashed before the
// device is told to try it. The simulated bootloader, [Boot], counts boot
// attempts and falls back to the committed slot past the boot limit.
//
// # Anti-rollback
//
// A [Floor] holds the highest committed security version and is raised
// only after a commit: [TPMFloor] keeps it in a TPM NV counter, which cannot
// go down even if the index is deleted and defined again; [LogFloor] keeps
// a hash chain MACed with a device key whose head the device reports so the
// server notices a reset. Neither lives in the TUF metadata cache, so wiping
// the cache does not lower it.
package ota
