package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/internal/client"
)

// uploadTimeout bounds a release upload: a 1 GiB image at a modest
// 10 MiB/s takes under two minutes; the API client's default 60 s is for
// small requests.
const uploadTimeout = 15 * time.Minute

// maxUploadAnswer bounds the answer to an upload: it may carry pending
// targets metadata (at most api.MaxTargetsMetadata, base64 in JSON).
const maxUploadAnswer = 8 << 20

// releaseOTACmds are the OTA verbs of `ward release`: publish, list and
// assign (a direct assignment to one device; rollouts come later).
func (a *app) releaseOTACmds() []*cobra.Command {
	var tenantID, name, version, hw, image, device, release, sbomFile, rvFile, rvSigFile, pendingOut string
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
			if (rvFile == "") != (rvSigFile == "") {
				return usageError{errors.New("--refvalues and --refvalues-sig go together (sign the reference values with the tenant's reference-value key)")}
			}
			var parts []releasePart
			for _, sp := range []struct {
				name, file string
				limit      int64
			}{{"sbom", sbomFile, api.MaxSBOMUpload}, {"refvalues", rvFile, api.MaxRefValuesUpload}, {"refvalues_sig", rvSigFile, maxRefValuesFile}} {
				if sp.file == "" {
					continue
				}
				b, err := readSmallFile(sp.file, sp.limit)
				if err != nil {
					return err
				}
				parts = append(parts, releasePart{sp.name, b})
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			q := url.Values{"name": {name}, "version": {version}, "hw": {hw}, "security_version": {strconv.FormatUint(sv, 10)}}
			var rel api.Release
			path := tenantPath(tenantID) + "/releases?" + q.Encode()
			pr := newUploadProgress(f, fi.Size(), a.stderr)
			if len(parts) == 0 {
				err = upload(c, cl, path, "application/octet-stream", pr, fi.Size(), &rel)
			} else {
				err = uploadParts(c, cl, path, parts, pr, &rel)
			}
			pr.stop()
			if err != nil {
				return err
			}
			if rel.PendingTargets != nil {
				if pendingOut == "" {
					return errors.New("the tenant's targets keys are offline: pass --out FILE to receive the unsigned targets metadata (or fetch it with ward release pending)")
				}
				if err := atomicfile.CreateNew(pendingOut, rel.PendingTargets, 0o644); err != nil {
					return err
				}
			}
			return a.emit(rel, func(w *tabwriter.Writer) {
				state := "published"
				if rel.PendingTargets != nil {
					state = "staged, awaiting offline signatures"
				}
				fmt.Fprintf(w, "release\t%s for %s %s\ncounter\t%d\nsecurity version\t%d\nimage\t%s (%d bytes, sha256 %s)\n",
					rel.Release, rel.HardwareID, state, rel.ReleaseCounter, rel.SecurityVersion, rel.Target, rel.Length, rel.SHA256)
				for _, d := range rel.Deltas {
					fmt.Fprintf(w, "delta\t%s\n", d)
				}
				if rel.SBOM != "" {
					fmt.Fprintf(w, "sbom\t%s\n", rel.SBOM)
				}
				if rel.RefValues != "" {
					fmt.Fprintf(w, "reference values\t%s (imported for attestation)\n", rel.RefValues)
				}
				if rel.PendingTargets != nil {
					fmt.Fprintf(w, "pending targets\t%s: sign offline with ward release sign, then ward release commit\n", pendingOut)
				}
			})
		},
	}
	publish.Flags().StringVar(&name, "name", "", "release name")
	publish.Flags().StringVar(&version, "version", "", "release version")
	publish.Flags().StringVar(&hw, "hw", "", "hardware model the image is for")
	publish.Flags().Uint64Var(&sv, "security-version", 0, "anti-rollback security version")
	publish.Flags().StringVar(&image, "image", "", "image file")
	publish.Flags().StringVar(&sbomFile, "sbom", "", "CycloneDX JSON SBOM of the image (a target of the release)")
	publish.Flags().StringVar(&rvFile, "refvalues", "", "attestation reference values JSON (a target of the release, imported into the verifier)")
	publish.Flags().StringVar(&rvSigFile, "refvalues-sig", "", "signature of --refvalues by the tenant's reference-value key (raw bytes)")
	publish.Flags().StringVar(&pendingOut, "out", "", "with offline targets keys: where to write the unsigned targets metadata")
	list := &cobra.Command{
		Use: "list", Short: "List published releases", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
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
	minSV := &cobra.Command{
		Use:   "min-security-version [N]",
		Short: "Show or raise the tenant's minimum security version (it never goes down)",
		Long: `Without N, print the tenant's minimum security version. With N, raise it:
no device is then assigned an image below N, every device's assignment is
re-signed with it (the agent raises its anti-rollback floor to it), and the
devices assigned an image below N are listed: give them a fixed release.
Refused if N is lower than the current minimum or above every published release.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			var body any
			method := "GET"
			if len(args) == 1 {
				v, err := strconv.ParseUint(args[0], 10, 64)
				if err != nil {
					return usageError{fmt.Errorf("N must be a non-negative integer, not %q", args[0])}
				}
				method, body = "PUT", api.MinSecurityVersionRequest{MinSecurityVersion: &v}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var m api.MinSecurityVersion
			if err := cl.Do(c.Context(), method, tenantPath(tenantID)+"/ota/min-security-version", body, &m); err != nil {
				return err
			}
			return a.emit(m, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "minimum security version\t%d\n", m.MinSecurityVersion)
				if method == "PUT" {
					fmt.Fprintf(w, "assignments re-signed\t%d\n", len(m.Restaged))
				}
				for _, b := range m.Below {
					fmt.Fprintf(w, "below the minimum\t%s: %s\n", b.Device, b.Detail)
				}
			})
		},
	}
	cmds := []*cobra.Command{publish, list, assign, minSV}
	for _, c := range cmds {
		c.Flags().StringVar(&tenantID, "tenant", "", "tenant ID")
	}
	return append(cmds, a.releaseOfflineCmds()...) // releaseoffline.go
}

// releasePart is a small part of a multipart release upload.
type releasePart struct {
	name string
	data []byte
}

// uploadParts POSTs the small parts then the image as multipart/form-data,
// streaming the image through a pipe rather than holding it in memory.
func uploadParts(c *cobra.Command, cl *client.Client, path string, parts []releasePart, image io.Reader, out any) error {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		for _, p := range parts {
			w, err := mw.CreateFormFile(p.name, p.name)
			if err == nil {
				_, err = w.Write(p.data)
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		w, err := mw.CreateFormFile("image", "image")
		if err == nil {
			_, err = io.Copy(w, image)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	return upload(c, cl, path, mw.FormDataContentType(), pr, -1, out)
}

// upload POSTs body with the content type and decodes the JSON answer,
// with a timeout fit for an image. size -1 means unknown (chunked).
func upload(c *cobra.Command, cl *client.Client, path, contentType string, body io.Reader, size int64, out any) error {
	req, err := http.NewRequestWithContext(c.Context(), http.MethodPost, cl.Base+path, body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+cl.Token)
	hc := *cl.HTTP
	hc.Timeout = uploadTimeout
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Ward API at %s: %w", cl.Base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxUploadAnswer))
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
