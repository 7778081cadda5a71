package cli

import (
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) deviceCmd() *cobra.Command {
	c := &cobra.Command{Use: "device", Short: "List, show and change the state of devices"}
	var tenantID string
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	var state string
	list := &cobra.Command{
		Use: "list", Short: "List devices", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			q := url.Values{}
			if state != "" {
				q.Set("state", state)
			}
			var ds []api.Device
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/devices?"+q.Encode(), nil, &ds); err != nil {
				return err
			}
			return a.emit(ds, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tSTATE\tGROUP\tCREATED")
				for _, d := range ds {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.ID, d.State, dash(d.Group), d.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	list.Flags().StringVar(&state, "state", "", "only devices in this state")
	show := &cobra.Command{
		Use: "show DEVICE", Short: "Show a device and its certificates", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var d api.Device
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/devices/"+url.PathEscape(args[0]), nil, &d); err != nil {
				return err
			}
			return a.emit(d, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "device\t%s\nstate\t%s\ngroup\t%s\ncreated\t%s\n", d.ID, d.State, dash(d.Group), d.CreatedAt.Format(time.RFC3339))
				for _, c := range d.Certs {
					fmt.Fprintf(w, "certificate\t%s %s until %s\n", c.Serial, c.Status, c.NotAfter.Format(time.RFC3339))
				}
				printAttestation(w, d.Attestation)
			})
		},
	}
	c.AddCommand(list, show, a.telemetryCmd(&tenantID), a.claimCmd(&tenantID))
	c.AddCommand(a.deviceAttestCmds(&tenantID)...)
	for _, m := range []struct{ use, path, short string }{
		{"rotate-mac-secret DEVICE", "mac-secret", "Give the device a new telemetry MAC secret (sent only over its mTLS session)"},
		{"next-mac-epoch DEVICE", "mac-epoch", "Start the next MAC epoch (the previous stays valid for a grace period)"},
	} {
		c.AddCommand(&cobra.Command{
			Use: m.use, Short: m.short, Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				cl, err := a.tenantClient(tenantID)
				if err != nil {
					return err
				}
				var res api.MACEpoch
				if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/devices/"+url.PathEscape(args[0])+"/"+m.path, struct{}{}, &res); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "device %s: MAC epoch %d\n", res.Device, res.Epoch)
				return nil
			},
		})
	}
	for _, st := range []struct{ verb, state, short string }{
		{"disable", "disabled", "Disable a device: refused at connect and enrollment, live sessions cut"},
		{"enable", "active", "Enable a disabled or quarantined device"},
		{"quarantine", "quarantined", "Confine a device to the attestation and OTA topics"},
		{"decommission", "decommissioned", "Retire a device for good"},
	} {
		var reason string
		cmd := &cobra.Command{
			Use: st.verb + " DEVICE", Short: st.short, Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				cl, err := a.tenantClient(tenantID)
				if err != nil {
					return err
				}
				var d api.Device
				if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/devices/"+url.PathEscape(args[0])+"/state",
					api.SetDeviceStateRequest{State: st.state, Reason: reason}, &d); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "device %s is %s\n", d.ID, d.State)
				return nil
			},
		}
		cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
		c.AddCommand(cmd)
	}
	return c
}
