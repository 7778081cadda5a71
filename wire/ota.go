package wire

import "time"

// OTA contract between the server's repositories and the agent's update
// engine. Both repositories are TUF repositories (go-tuf v2 metadata):
//
//	Image repository:    <server>/ota/v1/image/{N.root.json,timestamp.json,snapshot.json,targets.json}
//	                     <server>/ota/v1/image/targets/<target path>
//	Director repository: <server>/ota/v1/director/<device>/{N.root.json,timestamp.json,snapshot.json,targets.json}
//
// Both are served over HTTPS with the device's mTLS identity; the director
// path's <device> must equal the authenticated device. Target files support
// HTTP Range requests for resumable downloads.
const (
	OTAImagePath    = "/ota/v1/image/"
	OTADirectorPath = "/ota/v1/director/"
)

// Custom target metadata keys (TUF targets "custom" object).
const (
	// OTACustomHardwareID names the hardware model a target is for.
	OTACustomHardwareID = "hardwareId"
	// OTACustomReleaseCounter increases with every release of a hardware
	// model; the agent never installs a lower counter than it runs.
	OTACustomReleaseCounter = "releaseCounter"
	// OTACustomSecurityVersion is the anti-rollback security version.
	OTACustomSecurityVersion = "securityVersion"
	// OTACustomRelease is "<name>@<version>".
	OTACustomRelease = "release"
	// OTACustomKind is "image", "delta", "manifest", "sbom" or "refvalues".
	OTACustomKind = "kind"
	// OTACustomDeltaFrom (deltas only) names the target the delta applies
	// to; the reconstructed image must match OTACustomDeltaTarget's hash.
	OTACustomDeltaFrom   = "deltaFrom"
	OTACustomDeltaTarget = "deltaTarget"
	// OTACustomMinSecurityVersion (Director targets) is the tenant's
	// minimum security version at the time of assignment.
	OTACustomMinSecurityVersion = "minSecurityVersion"
)

// OTAJob is pushed to a device on ward/v1/<device>/ota/job: install the
// release the device's Director repository now names.
type OTAJob struct {
	Rollout string `json:"rollout"`
	// Attempt numbers the rollout's jobs for this device from 1: a retry
	// after a failure is a new attempt, a job sent again (ota/get) is not.
	Attempt  int       `json:"attempt,omitempty"`
	Release  string    `json:"release"` // "<name>@<version>"
	Deadline time.Time `json:"deadline,omitzero"`
	// HealthWindow is how long after boot the device must stay healthy
	// before it commits.
	HealthWindow time.Duration `json:"health_window,omitempty"`
}

// OTA phases a device reports on ward/v1/<device>/ota/status.
const (
	OTAPhaseDownloading = "downloading"
	OTAPhaseInstalling  = "installing"
	OTAPhaseRebooting   = "rebooting"
	OTAPhaseTrial       = "trial"       // booted the new slot, health gate running
	OTAPhaseCommitted   = "committed"   // success
	OTAPhaseRolledBack  = "rolled_back" // health gate failed or boot failed
	OTAPhaseFailed      = "failed"      // could not download/verify/install
)

// OTAStatus is what a device reports about a job.
type OTAStatus struct {
	Rollout string `json:"rollout"`
	Release string `json:"release"`
	Phase   string `json:"phase"`
	// Floor is the device's anti-rollback floor (highest committed
	// security version) and FloorHead the head of its floor log (no TPM).
	Floor     uint64    `json:"floor"`
	FloorHead string    `json:"floor_head,omitempty"`
	Error     string    `json:"error,omitempty"`
	Time      time.Time `json:"time"`
}
