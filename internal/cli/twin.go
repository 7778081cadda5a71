package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) twinCmd() *cobra.Command {
	c := &cobra.Command{Use: "twin", Short: "Read device twins and set desired state"}
	var tenantID, name string
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	c.PersistentFlags().StringVar(&name, "name", "", "twin name (default: default)")
	path := func(device string) string {
		p := tenantPath(tenantID) + "/devices/" + url.PathEscape(device) + "/twin"
		if name != "" {
			p += "?name=" + url.QueryEscape(name)
		}
		return p
	}
	show := func(t api.Twin) error {
		return a.emit(t, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "desired (v%d)\t%s\nreported (v%d)\t%s\n", t.Desired.Version, t.Desired.Doc, t.Reported.Version, t.Reported.Doc)
			if len(t.Delta) > 0 {
				fmt.Fprintf(w, "delta\t%s\n", t.Delta)
			} else {
				fmt.Fprintln(w, "delta\t(in sync)")
			}
		})
	}
	get := &cobra.Command{
		Use: "get DEVICE", Short: "Show desired, reported and the delta", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var t api.Twin
			if err := cl.Do(c.Context(), "GET", path(args[0]), nil, &t); err != nil {
				return err
			}
			return show(t)
		},
	}
	var patch string
	var ifMatch int64
	set := &cobra.Command{
		Use: "set DEVICE", Short: "Merge-patch the desired state (null deletes a key); the device gets the delta", Args: cobra.ExactArgs(1),
		Example: `  ward twin set --tenant acme sensor-1 --patch '{"interval": 30}' --if-match 3`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if !json.Valid([]byte(patch)) {
				return usageError{errors.New("--patch must be a JSON object")}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var t api.Twin
			h := map[string]string{"Content-Type": "application/merge-patch+json"}
			if ifMatch >= 0 {
				h["If-Match"] = strconv.Quote(strconv.FormatInt(ifMatch, 10))
			}
			if err := cl.DoWithHeaders(c.Context(), "PATCH", path(args[0]), json.RawMessage(patch), h, &t); err != nil {
				return err
			}
			return show(t)
		},
	}
	set.Flags().StringVar(&patch, "patch", "", "JSON merge patch (RFC 7386)")
	set.Flags().Int64Var(&ifMatch, "if-match", -1, "only if the desired state is at this version (else 409)")
	c.AddCommand(get, set)
	return c
}
