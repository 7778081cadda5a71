//go:build tools

// Package interop pins EST peers written by others so that tests in the main
// module can build them with "go build" from this module. It holds no code
// of its own; the tools build tag keeps it out of normal builds.
package interop

import (
	_ "github.com/globalsign/est/cmd/estclient"
)
