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
	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/internal/client"
)

func tenantPath(t string) string { return "/api/v1/tenants/" + url.PathEscape(t) }

// tenantClient checks that a tenant was named and returns an API client.
func (a *app) tenantClient(tenant string) (*client.Client, error) {
	if err := requireTenant(tenant); err != nil {
		return nil, err
	}
	return a.client()
}

func requireTenant(t string) error {
	if t == "" {
		return usageError{withHint(errors.New("--tenant is required"), "name the tenant, e.g. --tenant acme")}
	}
	return nil
}

func (a *app) caCmd() *cobra.Command {
	c := &cobra.Command{Use: "ca", Short: "Inspect and manage a tenant's certificate authorities"}
	var tenantID string
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	chain := &cobra.Command{
		Use: "chain", Short: "Print the CA chain (issuing CA, then root) as PEM", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var ch api.CAChain
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/ca", nil, &ch); err != nil {
				return err
			}
			return a.emit(ch, func(w *tabwriter.Writer) { fmt.Fprint(w, ch.ChainPEM) })
		},
	}
	var out string
	offline := &cobra.Command{
		Use:   "root-offline",
		Short: "Export the root CA key to a 0600 file and remove it from the server",
		Long: `Export the tenant's root CA key to --out (mode 0600, never overwritten) and
remove it from the server. The server keeps issuing from the issuing CA; making
a new issuing CA later needs this key handed back (ward ca new-issuing).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if out == "" {
				return usageError{errors.New("--out FILE is required: the root key is shown only once")}
			}
			if _, err := os.Stat(out); err == nil {
				return usageError{fmt.Errorf("%s exists; refusing to overwrite a key file", out)}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var res api.RootOfflineResponse
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/ca/root-offline", api.RootOfflineRequest{Confirm: true}, &res); err != nil {
				return err
			}
			if err := atomicfile.CreateNew(out, []byte(res.RootKeyPEM), 0o600); err != nil {
				// The server already forgot the key: print it rather than lose it.
				fmt.Fprint(a.stdout, res.RootKeyPEM)
				return withHint(fmt.Errorf("the root key left the server but could not be written to %s: %w", out, err),
					"the key was printed above instead; store it offline now, it is the only copy")
			}
			fmt.Fprintf(a.stdout, "root CA key of %s written to %s (0600) and removed from the server; keep it offline\n", tenantID, out)
			return nil
		},
	}
	offline.Flags().StringVar(&out, "out", "", "file to write the root key to (0600)")
	var rootKey, alg string
	newIssuing := &cobra.Command{
		Use: "new-issuing", Short: "Create a new issuing CA (the old one keeps serving CRL and OCSP)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			req := api.NewIssuingRequest{Algorithm: alg}
			if rootKey != "" {
				b, err := os.ReadFile(rootKey)
				if err != nil {
					return err
				}
				req.RootKeyPEM = string(b)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var ca api.CAInfo
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/ca/issuing", req, &ca); err != nil {
				return err
			}
			return a.emit(ca, func(w *tabwriter.Writer) { fmt.Fprintf(w, "new issuing CA %s\n", ca.ID) })
		},
	}
	newIssuing.Flags().StringVar(&rootKey, "root-key", "", "the offline root key file (needed once the root is offline)")
	newIssuing.Flags().StringVar(&alg, "algorithm", "", "ecdsa-p256 (default), ecdsa-p384, rsa-3072 or ed25519")
	c.AddCommand(chain, offline, newIssuing)
	return c
}

func (a *app) certCmd() *cobra.Command {
	c := &cobra.Command{Use: "cert", Short: "Issue, list, show and revoke certificates"}
	var tenantID string
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	var req api.IssueCertRequest
	var csrFile, outFile string
	var validity time.Duration
	issue := &cobra.Command{
		Use: "issue", Short: "Issue a certificate from a CSR (its signature is checked)", Args: cobra.NoArgs,
		Example: "  ward cert issue --tenant acme --device sensor-1 --csr sensor-1.csr --out sensor-1.pem",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if csrFile == "" {
				return usageError{errors.New("--csr FILE is required")}
			}
			b, err := os.ReadFile(csrFile)
			if err != nil {
				return err
			}
			req.CSR = string(b)
			if validity > 0 {
				req.Validity = validity.String()
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var cert api.Cert
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/certs", req, &cert); err != nil {
				return err
			}
			if outFile != "" {
				if err := os.WriteFile(outFile, []byte(cert.PEM), 0o644); err != nil {
					return err
				}
			}
			return a.emit(cert, func(w *tabwriter.Writer) {
				if outFile == "" {
					fmt.Fprint(w, cert.PEM)
				} else {
					fmt.Fprintf(w, "issued certificate %s (expires %s) to %s\n", cert.Serial, cert.NotAfter.Format(time.RFC3339), outFile)
				}
			})
		},
	}
	f := issue.Flags()
	f.StringVar(&req.Device, "device", "", "device ID (device and short-lived profiles)")
	f.StringVar(&csrFile, "csr", "", "PEM certificate request")
	f.StringVar(&req.Profile, "profile", "device", "device, server or short-lived")
	f.DurationVar(&validity, "validity", 0, "shorten the profile's validity, e.g. 720h")
	f.StringSliceVar(&req.DNSNames, "dns", nil, "server profile: DNS names the certificate may carry")
	f.StringVar(&outFile, "out", "", "write the certificate PEM to this file")

	var device, status string
	list := &cobra.Command{
		Use: "list", Short: "List certificates", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			q := url.Values{}
			if device != "" {
				q.Set("device", device)
			}
			if status != "" {
				q.Set("status", status)
			}
			var cs []api.Cert
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/certs?"+q.Encode(), nil, &cs); err != nil {
				return err
			}
			return a.emit(cs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SERIAL\tDEVICE\tPROFILE\tNOT AFTER\tSTATUS")
				for _, c := range cs {
					st := c.Status
					if c.Reason != "" {
						st += " (" + c.Reason + ")"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Serial, dash(c.Device), c.Profile, c.NotAfter.Format(time.RFC3339), st)
				}
			})
		},
	}
	list.Flags().StringVar(&device, "device", "", "only this device's certificates")
	list.Flags().StringVar(&status, "status", "", "good or revoked")
	show := &cobra.Command{
		Use: "show SERIAL", Short: "Show a certificate", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var cert api.Cert
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/certs/"+url.PathEscape(args[0]), nil, &cert); err != nil {
				return err
			}
			return a.emit(cert, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "serial\t%s\ndevice\t%s\nprofile\t%s\nca\t%s\nnot before\t%s\nnot after\t%s\nstatus\t%s %s\nspki sha256\t%s\n%s",
					cert.Serial, dash(cert.Device), cert.Profile, cert.CAID, cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339),
					cert.Status, cert.Reason, cert.SPKISHA256, cert.PEM)
			})
		},
	}
	var reason string
	revoke := &cobra.Command{
		Use: "revoke SERIAL", Short: "Revoke a certificate (CRL and OCSP reflect it at once)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var cert api.Cert
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/certs/"+url.PathEscape(args[0])+"/revoke", api.RevokeRequest{Reason: reason}, &cert); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "revoked certificate %s (%s)\n", cert.Serial, cert.Reason)
			return nil
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn")
	c.AddCommand(issue, list, show, revoke)
	return c
}
