package cli

import (
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) eventCmd() *cobra.Command {
	c := &cobra.Command{Use: "event", Short: "Read the security event stream"}
	var tenantID, typ, device string
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List security events, newest first (repeats are aggregated with a count)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"type": typ, "device": device} {
				if v != "" {
					q.Set(k, v)
				}
			}
			q.Set("limit", fmt.Sprint(limit))
			path := "/api/v1/events?"
			if tenantID != "" {
				path = tenantPath(tenantID) + "/events?"
			}
			var evs []api.SecurityEvent
			if err := cl.Do(c.Context(), "GET", path+q.Encode(), nil, &evs); err != nil {
				return err
			}
			return a.emit(evs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "LAST SEEN\tSEVERITY\tTYPE\tTENANT\tDEVICE\tCOUNT\tREASON")
				for _, e := range evs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", e.LastAt.Format(time.RFC3339), e.Severity, e.Type, dash(e.Tenant),
						dash(e.Device), e.Count, dash(e.Reason))
				}
			})
		},
	}
	list.Flags().StringVar(&tenantID, "tenant", "", "only this tenant's events (default: all, for a global token)")
	list.Flags().StringVar(&typ, "type", "", "only events of this type, e.g. cert.shared")
	list.Flags().StringVar(&device, "device", "", "only this device's events")
	list.Flags().IntVar(&limit, "limit", 1000, "at most this many rows")
	c.AddCommand(list)
	return c
}
