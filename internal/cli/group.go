package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) groupCmd() *cobra.Command {
	c := &cobra.Command{Use: "group", Short: "Manage enrollment groups (zero-touch provisioning)"}
	var tenantID string
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	var req api.CreateGroupRequest
	var caFile, ekFile, policyName string
	var lifetime time.Duration
	var tags map[string]string
	create := &cobra.Command{
		Use: "create NAME", Short: "Create an enrollment group; devices use the EST label <tenant>.<name>", Args: cobra.ExactArgs(1),
		Example: `  ward group create --tenant acme factory --mechanism x509 --ca mfr-ca.pem --id-from cn
  ward group create --tenant acme sensors --mechanism symmetric    # prints the group key once
  ward group create --tenant acme tpm-fleet --mechanism tpm --ek-roots tpm-vendor-roots.pem`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			req.Name = args[0]
			if caFile != "" {
				b, err := os.ReadFile(caFile)
				if err != nil {
					return err
				}
				req.X509CAPEM = string(b)
			}
			if ekFile != "" {
				b, err := os.ReadFile(ekFile)
				if err != nil {
					return err
				}
				req.EKRootsPEM = string(b)
			}
			req.Template.Policy, req.Template.Lifetime, req.Template.Tags = policyName, lifetime, tags
			cl, err := a.client()
			if err != nil {
				return err
			}
			var g api.Group
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/groups", req, &g); err != nil {
				return err
			}
			return a.emit(g, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "created group %s (%s); devices enroll with the EST label %s\n", g.Name, g.Mechanism, g.Label)
				if g.Secret != "" {
					fmt.Fprintf(w, "secret (shown once): %s\n", g.Secret)
				}
			})
		},
	}
	f := create.Flags()
	f.StringVar(&req.Mechanism, "mechanism", "", "x509, tpm, symmetric or token")
	f.StringVar(&caFile, "ca", "", "x509: manufacturer CA certificates (PEM)")
	f.StringVar(&req.IDFrom, "id-from", "cn", "x509: device ID from cn, serial, san-dns or san-uri")
	f.StringVar(&req.IDPrefix, "id-prefix", "", "x509: prefix to strip from the device ID")
	f.StringVar(&ekFile, "ek-roots", "", "tpm: TPM manufacturer roots for EK certificates (PEM)")
	f.StringSliceVar(&req.AllowedEKs, "allow-ek", nil, "tpm: allowed EK public key hashes (instead of roots)")
	f.StringVar(&policyName, "policy", "", "template: topic policy for devices of this group")
	f.StringToStringVar(&tags, "tag", nil, "template: tags, e.g. --tag site=berlin")
	f.DurationVar(&lifetime, "lifetime", 0, "template: certificate lifetime")
	f.BoolVar(&req.Reprovision, "reprovision", false, "allow a provisioned device ID to onboard again")
	f.StringVar(&req.WebhookURL, "webhook", "", "HTTPS pre-provisioning webhook (approve, deny or override)")
	list := &cobra.Command{
		Use: "list", Short: "List groups", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var gs []api.Group
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/groups", nil, &gs); err != nil {
				return err
			}
			return a.emit(gs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tMECHANISM\tEST LABEL\tPOLICY\tREPROVISION")
				for _, g := range gs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\n", g.Name, g.Mechanism, g.Label, dash(g.Template.Policy), g.Reprovision)
				}
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a group", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var g api.Group
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/groups/"+url.PathEscape(args[0]), nil, &g); err != nil {
				return err
			}
			return a.emit(g, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "name\t%s\nmechanism\t%s\nEST label\t%s\npolicy\t%s\nenabled\t%v\n", g.Name, g.Mechanism, g.Label, dash(g.Template.Policy), g.Enabled)
			})
		},
	}
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a group", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			return cl.Do(c.Context(), "DELETE", tenantPath(tenantID)+"/groups/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	var group, device, ttl string
	secretCmd := func(use, short, path string) *cobra.Command {
		cmd := &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				if err := requireTenant(tenantID); err != nil {
					return err
				}
				if group == "" || device == "" {
					return usageError{errors.New("--group and --device are required")}
				}
				cl, err := a.client()
				if err != nil {
					return err
				}
				var res api.SecretResponse
				if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/groups/"+url.PathEscape(group)+"/"+path,
					api.DeviceRequest{Device: device, TTL: ttl}, &res); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, res.Secret)
				return nil
			},
		}
		cmd.Flags().StringVar(&group, "group", "", "group name")
		cmd.Flags().StringVar(&device, "device", "", "device ID")
		return cmd
	}
	derive := secretCmd("derive-key", "Print a device's symmetric key for the factory line (base64)", "device-keys")
	token := secretCmd("token", "Mint a one-time enrollment token of a token group", "tokens")
	token.Flags().StringVar(&ttl, "ttl", "1h", "lifetime")
	claimable := secretCmd("claimable", "Register a device for claiming and print its claim code", "claimable")
	c.AddCommand(create, list, show, del, derive, token, claimable)
	return c
}

func (a *app) claimCmd(tenant *string) *cobra.Command {
	return &cobra.Command{
		Use: "claim CODE", Short: "Claim a device made for no tenant yet with the code on its label", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(*tenant)
			if err != nil {
				return err
			}
			var res map[string]string
			if err := cl.Do(c.Context(), "POST", tenantPath(*tenant)+"/claims", api.ClaimRequest{Code: args[0]}, &res); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "claimed device %s for %s; it re-enrolls under %s's CA on its next contact\n", res["device"], res["owner"], res["owner"])
			return nil
		},
	}
}
