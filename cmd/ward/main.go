// Command ward is the Ward server and operator CLI.
package main

import (
	"os"

	"github.com/wardiot/ward/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
