// Command ward-agent is the Ward device agent: it enrolls the device,
// keeps its certificate fresh, and simulates fleets for load tests.
package main

import (
	"os"

	"github.com/wardiot/ward/internal/agentcli"
)

func main() {
	os.Exit(agentcli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
