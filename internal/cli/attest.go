package cli

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

// maxRefValuesFile bounds the files `release refvalues import` reads.
const maxRefValuesFile = 64 << 10

func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// deviceAttestCmds are `ward device attest` and `ward device approve-ak`.
func (a *app) deviceAttestCmds(tenantID *string) []*cobra.Command {
	attest := &cobra.Command{
		Use: "attest DEVICE", Short: "Send the device an attestation challenge now", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(*tenantID); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var res api.AttestChallenge
			if err := cl.Do(c.Context(), "POST", tenantPath(*tenantID)+"/devices/"+url.PathEscape(args[0])+"/attest", struct{}{}, &res); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "challenge %s sent to %s (expires %s); see the verdict with: ward device show %s\n",
				res.ID, res.Device, res.Expires.Format(time.RFC3339), res.Device)
			return nil
		},
	}
	approve := &cobra.Command{
		Use: "approve-ak DEVICE", Short: "Approve the attestation key the device asked to enroll (credential activation follows)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(*tenantID); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "POST", tenantPath(*tenantID)+"/devices/"+url.PathEscape(args[0])+"/attestation/enroll", struct{}{}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "device %s: credential activation sent\n", args[0])
			return nil
		},
	}
	return []*cobra.Command{attest, approve}
}

// printAttestation adds a device's attestation state to `device show`.
func printAttestation(w *tabwriter.Writer, st *api.AttestationState) {
	if st == nil {
		fmt.Fprintln(w, "attestation\tnever")
		return
	}
	ak := "not enrolled"
	switch {
	case st.AKEnrolled:
		ak = "enrolled " + st.AKEnrolledAt.Format(time.RFC3339)
	case st.AKPending:
		ak = "waiting for approval (ward device approve-ak)"
	}
	fmt.Fprintf(w, "attestation key\t%s\n", ak)
	if st.Result == "" {
		fmt.Fprintln(w, "attestation\tnever")
		return
	}
	fmt.Fprintf(w, "attestation\t%s at %s (assurance %s, release %s)\n", st.Result, st.Time.Format(time.RFC3339), st.Assurance, dash(st.Release))
	for _, r := range st.Reasons {
		fmt.Fprintf(w, "reason\t%s\n", r)
	}
	if st.TPMInfo != "" || st.Events > 0 {
		fmt.Fprintf(w, "evidence\t%d events, reset count %d, restart count %d, TPM %s\n", st.Events, st.ResetCount, st.RestartCount, dash(st.TPMInfo))
	}
}

func (a *app) releaseCmd() *cobra.Command {
	c := &cobra.Command{Use: "release", Short: "Firmware releases: publish, list, assign; reference values for attestation"}
	rv := &cobra.Command{Use: "refvalues", Short: "A release's signed reference values (what a device booting it measures)"}
	var tenantID, file, sig, keyFile string
	imp := &cobra.Command{
		Use: "import", Short: "Import a release's reference values and signature (approves the release)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if file == "" || sig == "" {
				return errors.New("--file and --sig are required")
			}
			doc, err := readSmallFile(file, maxRefValuesFile)
			if err != nil {
				return err
			}
			s, err := readSmallFile(sig, maxRefValuesFile)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var info api.RefValuesInfo
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/refvalues", api.RefValues{Doc: doc, Signature: s}, &info); err != nil {
				return err
			}
			return a.emit(info, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "release\t%s %s approved\nstages\t%s\n", info.HWModel, info.Release, strings.Join(info.Stages, ", "))
			})
		},
	}
	imp.Flags().StringVar(&file, "file", "", "reference values JSON")
	imp.Flags().StringVar(&sig, "sig", "", "signature file (raw bytes)")
	key := &cobra.Command{
		Use: "set-key", Short: "Set the tenant's reference-value signing key (PEM public key, Ed25519 or ECDSA)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			b, err := readSmallFile(keyFile, maxRefValuesFile)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "PUT", tenantPath(tenantID)+"/refvalues/key", api.RefValueKey{PublicKeyPEM: string(b)}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "tenant %s: reference-value key set\n", tenantID)
			return nil
		},
	}
	key.Flags().StringVar(&keyFile, "key", "", "PEM public key file")
	rv.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	rv.AddCommand(imp, key)
	c.AddCommand(rv)
	c.AddCommand(a.releaseOTACmds()...) // release.go
	return c
}
