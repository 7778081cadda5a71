// Command otadelta makes and applies Ward's zstd deltas as a separate
// process, so bench/ota-delta.sh can measure its time and peak RSS next
// to bsdiff and xdelta3 on the same image pair.
//
//	otadelta make OLD NEW PATCH
//	otadelta apply OLD PATCH OUT LENGTH
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"

	"github.com/wardiot/ward/internal/ota/delta"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "otadelta: error:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 4 && args[0] == "make":
		old, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		img, err := os.ReadFile(args[2])
		if err != nil {
			return err
		}
		f, err := os.Create(args[3])
		if err != nil {
			return err
		}
		w := bufio.NewWriter(f)
		if err := delta.Make(w, old, img); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		return f.Close()
	case len(args) == 5 && args[0] == "apply":
		// The device's path: old image in memory (the dictionary), patch
		// and output streamed.
		old, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		n, err := strconv.ParseInt(args[4], 10, 64)
		if err != nil {
			return err
		}
		p, err := os.Open(args[2])
		if err != nil {
			return err
		}
		defer p.Close()
		out, err := os.Create(args[3])
		if err != nil {
			return err
		}
		w := bufio.NewWriter(out)
		if _, err := delta.Apply(w, old, bufio.NewReader(p), n); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		return out.Close()
	}
	return fmt.Errorf("usage: otadelta make OLD NEW PATCH | apply OLD PATCH OUT LENGTH")
}
