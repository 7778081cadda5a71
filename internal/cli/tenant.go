package cli

import (
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) tenantCmd() *cobra.Command {
	c := &cobra.Command{Use: "tenant", Short: "Manage tenants"}
	var name string
	create := &cobra.Command{
		Use: "create ID", Short: "Create a tenant (and its data key)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var t api.Tenant
			if err := cl.Do(c.Context(), "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: args[0], Name: name}, &t); err != nil {
				return err
			}
			return a.emit(t, func(w *tabwriter.Writer) { fmt.Fprintf(w, "created tenant %s\n", t.ID) })
		},
	}
	create.Flags().StringVar(&name, "name", "", "display name")
	list := &cobra.Command{
		Use: "list", Short: "List tenants", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var ts []api.Tenant
			if err := cl.Do(c.Context(), "GET", "/api/v1/tenants", nil, &ts); err != nil {
				return err
			}
			return a.emit(ts, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tNAME\tCREATED")
				for _, t := range ts {
					fmt.Fprintf(w, "%s\t%s\t%s\n", t.ID, t.Name, t.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a tenant; its data key is destroyed, so its sealed data becomes unreadable", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/api/v1/tenants/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "deleted tenant %s; its data key is destroyed\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, list, del)
	return c
}

func (a *app) whoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use: "whoami", Short: "Show the identity of the token in use", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var w api.WhoAmI
			if err := cl.Do(c.Context(), "GET", "/api/v1/whoami", nil, &w); err != nil {
				return err
			}
			return a.emit(w, func(tw *tabwriter.Writer) {
				scope := w.Tenant
				if scope == "" {
					scope = "(global)"
				}
				fmt.Fprintf(tw, "token\t%s\nrole\t%s\ntenant\t%s\n", w.TokenID, w.Role, scope)
			})
		},
	}
}
