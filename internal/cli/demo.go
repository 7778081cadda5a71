package cli

import (
	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/demo"
)

func (a *app) demoCmd() *cobra.Command {
	var o demo.Options
	var verbose bool
	c := &cobra.Command{
		Use:   "demo",
		Short: "Start a throwaway server and walk through what Ward proves",
		Long: `Start a server in a temporary directory (SQLite, loopback, random ports), then
create tenants and tokens, make allowed and refused API calls, and verify the
audit chain. Each step is checked; the demo exits non-zero if one fails.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if verbose {
				o.Log = a.stderr
			}
			return demo.Run(c.Context(), a.stdout, o)
		},
	}
	c.Flags().BoolVar(&o.Keep, "keep", false, "keep the temporary data directory")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the server's logs")
	return c
}
