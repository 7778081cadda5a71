package cli

import (
	"errors"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) tokenCmd() *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Manage API and enrollment tokens"}
	var req api.CreateTokenRequest
	var ttl time.Duration
	var enroll bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token (printed once; only its hash is stored)",
		Example: `  ward token create --role operator --tenant acme --ttl 720h
  ward token create --enroll --tenant acme --device sensor-1 --ttl 1h`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if enroll {
				req.Kind = "enroll"
				if req.Role != "" {
					return usageError{errors.New("--role does not apply to enrollment tokens")}
				}
			} else if req.Role == "" {
				return usageError{withHint(errors.New("--role is required"), "one of admin, operator, viewer, auditor")}
			}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var t api.CreatedToken
			if err := cl.Do(c.Context(), "POST", "/api/v1/tokens", req, &t); err != nil {
				return err
			}
			return a.emit(t, func(w *tabwriter.Writer) { fmt.Fprintln(w, t.Secret) })
		},
	}
	f := create.Flags()
	f.StringVar(&req.Role, "role", "", "admin, operator, viewer or auditor")
	f.StringVar(&req.Tenant, "tenant", "", "scope the token to a tenant (default: the caller's scope)")
	f.DurationVar(&ttl, "ttl", 0, "lifetime, e.g. 24h (default: no expiry for API tokens)")
	f.StringVar(&req.Name, "name", "", "a label to recognise the token by")
	f.BoolVar(&enroll, "enroll", false, "create a one-time device enrollment token")
	f.StringVar(&req.Device, "device", "", "with --enroll: the device ID the token may enroll")

	var kind string
	list := &cobra.Command{
		Use: "list", Short: "List tokens (never their secrets)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var ts []api.Token
			if err := cl.Do(c.Context(), "GET", "/api/v1/tokens?kind="+url.QueryEscape(kind), nil, &ts); err != nil {
				return err
			}
			return a.emit(ts, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tKIND\tROLE\tTENANT\tDEVICE\tNAME\tEXPIRES\tSTATE")
				for _, t := range ts {
					exp, state := "-", "active"
					if t.ExpiresAt != nil {
						exp = t.ExpiresAt.Format(time.RFC3339)
					}
					if t.RevokedAt != nil {
						state = "revoked"
					} else if t.UsedAt != nil {
						state = "used"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Kind, dash(t.Role), dash(t.Tenant), dash(t.Device), dash(t.Name), exp, state)
				}
			})
		},
	}
	list.Flags().StringVar(&kind, "kind", "api", "api or enroll")
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/api/v1/tokens/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "revoked token %s\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, list, revoke)
	return c
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
