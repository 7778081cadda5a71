package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
)

// uploadTimeout bounds a release upload: a 1 GiB image at a modest
// 10 MiB/s takes under two minutes; the API client's default 60 s is for
// small requests.
const uploadTimeout = 15 * time.Minute

// releaseOTACmds are the OTA verbs of `ward release`: publish, list and
// assign (a direct assignment to one device; rollouts come later).
func (a *app) releaseOTACmds() []*cobra.Command {
	var tenantID, name, version, hw, image, device, release string
	var sv uint64
	publish := &cobra.Command{
		Use: "publish", Short: "Publish a release to the tenant's Image repository", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if name == "" || version == "" || hw == "" || image == "" {
				return usageError{errors.New("--name, --version, --hw and --image are required")}
			}
			if !c.Flags().Changed("security-version") {
				return usageError{errors.New("--security-version is required (the anti-rollback version: raise it when a release fixes a vulnerability)")}
			}
			f, err := os.Open(image)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if fi.Size() > api.MaxReleaseUpload {
				return fmt.Errorf("%s is %d bytes, over the 1 GiB limit", image, fi.Size())
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			q := url.Values{"name": {name}, "version": {version}, "hw": {hw}, "security_version": {strconv.FormatUint(sv, 10)}}
			var rel api.Release
			if err := upload(c, cl, tenantPath(tenantID)+"/releases?"+q.Encode(), f, fi.Size(), &rel); err != nil {
				return err
			}
			return a.emit(rel, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "release\t%s for %s published\ncounter\t%d\nsecurity version\t%d\nimage\t%s (%d bytes, sha256 %s)\n",
					rel.Release, rel.HardwareID, rel.ReleaseCounter, rel.SecurityVersion, rel.Target, rel.Length, rel.SHA256)
				for _, d := range rel.Deltas {
					fmt.Fprintf(w, "delta\t%s\n", d)
				}
			})
		},
	}
	publish.Flags().StringVar(&name, "name", "", "release name")
	publish.Flags().StringVar(&version, "version", "", "release version")
	publish.Flags().StringVar(&hw, "hw", "", "hardware model the image is for")
	publish.Flags().Uint64Var(&sv, "security-version", 0, "anti-rollback security version")
	publish.Flags().StringVar(&image, "image", "", "image file")
	list := &cobra.Command{
		Use: "list", Short: "List published releases", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var rs []api.Release
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/releases", nil, &rs); err != nil {
				return err
			}
			return a.emit(rs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "RELEASE\tHARDWARE\tCOUNTER\tSECURITY\tBYTES\tDELTAS")
				for _, r := range rs {
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\n", r.Release, r.HardwareID, r.ReleaseCounter, r.SecurityVersion, r.Length, len(r.Deltas))
				}
			})
		},
	}
	assign := &cobra.Command{
		Use: "assign", Short: "Assign a release to one device and send it the update job", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if device == "" || !strings.Contains(release, "@") {
				return usageError{errors.New("--device and --release NAME@VERSION are required")}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var as api.OTAAssignment
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/devices/"+url.PathEscape(device)+"/ota/assign", api.AssignRequest{Release: release}, &as); err != nil {
				return err
			}
			return a.emit(as, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "device\t%s\nassigned\t%s (%s)\n", as.Device, as.Release, as.Target)
				if !as.Published {
					fmt.Fprintln(w, "job\tnot sent (gateway unavailable); the device finds the assignment at its next check")
				}
			})
		},
	}
	assign.Flags().StringVar(&device, "device", "", "device ID")
	assign.Flags().StringVar(&release, "release", "", "release NAME@VERSION")
	cmds := []*cobra.Command{publish, list, assign}
	for _, c := range cmds {
		c.Flags().StringVar(&tenantID, "tenant", "", "tenant ID")
	}
	return cmds
}

// upload POSTs body as application/octet-stream and decodes the JSON
// answer, with a timeout fit for an image.
func upload(c *cobra.Command, cl *client.Client, path string, body io.Reader, size int64, out any) error {
	req, err := http.NewRequestWithContext(c.Context(), http.MethodPost, cl.Base+path, body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+cl.Token)
	hc := *cl.HTTP
	hc.Timeout = uploadTimeout
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Ward API at %s: %w", cl.Base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		p := &client.Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode)}
		_ = json.Unmarshal(data, p)
		return p
	}
	return json.Unmarshal(data, out)
}
