package agentcli

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// defaultCmdline is where Linux shows the kernel command line, on which
// the bootloader names the slot it booted (ward.slot=a or ward.slot=b).
const defaultCmdline = "/proc/cmdline"

// maxCmdlineSize bounds reading the kernel command line: Linux caps it at
// COMMAND_LINE_SIZE, at most 4 KiB on common architectures; a file
// planted in its place must not make the agent read without bound.
const maxCmdlineSize = 64 << 10

// cmdlineSlotParam is the kernel parameter naming the booted slot.
const cmdlineSlotParam = "ward.slot"

// errNoSlotParam means the command line does not name the booted slot.
var errNoSlotParam = errors.New("the kernel command line has no ward.slot= parameter")

// parseCmdlineSlot returns the slot named by ward.slot= on a kernel
// command line. As with the kernel's own parameters, the last occurrence
// wins; a value may be double-quoted.
func parseCmdlineSlot(b []byte) (string, error) {
	if len(b) > maxCmdlineSize {
		return "", fmt.Errorf("kernel command line larger than %d bytes", maxCmdlineSize)
	}
	found, slot := false, ""
	for _, f := range bytes.Fields(b) {
		v, ok := bytes.CutPrefix(f, []byte(cmdlineSlotParam+"="))
		if !ok {
			continue
		}
		found, slot = true, strings.Trim(string(v), `"`)
	}
	if !found {
		return "", errNoSlotParam
	}
	if slot != "a" && slot != "b" {
		return "", fmt.Errorf("the kernel command line names slot %q; ward.slot must be a or b", truncate(slot, 16))
	}
	return slot, nil
}

// readCmdlineSlot reads the booted slot from the kernel command line at
// path.
func readCmdlineSlot(path string) (string, error) {
	b, err := readFileLimited(path, maxCmdlineSize, "kernel command line")
	if err != nil {
		return "", err
	}
	return parseCmdlineSlot(b)
}
