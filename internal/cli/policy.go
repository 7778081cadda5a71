package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) policyCmd() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Manage device topic policies"}
	var tenantID string
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	var file string
	set := &cobra.Command{
		Use: "set NAME", Short: "Create or replace a policy from a JSON document", Args: cobra.ExactArgs(1),
		Example: `  ward policy set --tenant acme readonly --file readonly.json
  # {"version":1,"publish":{"allow":["ward/v1/${device}/telemetry/#"]},"subscribe":{"allow":["ward/v1/${device}/#"]}}`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			if !json.Valid(b) {
				return usageError{fmt.Errorf("%s is not JSON", file)}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "PUT", tenantPath(tenantID)+"/policies/"+url.PathEscape(args[0]), json.RawMessage(b), nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "policy %s stored; devices it applies to reconnect under it\n", args[0])
			return nil
		},
	}
	set.Flags().StringVar(&file, "file", "", "policy document")
	list := &cobra.Command{
		Use: "list", Short: "List policies and assignments", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var ps api.Policies
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/policies", nil, &ps); err != nil {
				return err
			}
			return a.emit(ps, func(w *tabwriter.Writer) {
				for _, p := range ps.Policies {
					fmt.Fprintf(w, "policy\t%s\t%s\n", p.Name, p.Document)
				}
				for _, x := range ps.Assignments {
					fmt.Fprintf(w, "assigned\t%s %s\t-> %s\n", x.Kind, x.Target, x.Policy)
				}
			})
		},
	}
	var device, group string
	assign := &cobra.Command{
		Use: "assign NAME", Short: "Assign a policy to a device or a group (NAME \"\" removes)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			req := api.PolicyAssignment{Policy: args[0]}
			switch {
			case device != "" && group == "":
				req.Kind, req.Target = "device", device
			case group != "" && device == "":
				req.Kind, req.Target = "group", group
			default:
				return usageError{errors.New("give exactly one of --device or --group")}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "PUT", tenantPath(tenantID)+"/policy-assignments", req, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s %s now uses policy %q\n", req.Kind, req.Target, args[0])
			return nil
		},
	}
	assign.Flags().StringVar(&device, "device", "", "device ID")
	assign.Flags().StringVar(&group, "group", "", "enrollment group")
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a policy and its assignments", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			return cl.Do(c.Context(), "DELETE", tenantPath(tenantID)+"/policies/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	c.AddCommand(set, list, assign, del)
	return c
}
