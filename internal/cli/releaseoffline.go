package cli

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// maxPublicKeyFile bounds a PEM public key file `release init-offline`
// reads: one key is a few hundred bytes.
const maxPublicKeyFile = 16 << 10

// releaseOfflineCmds are the verbs of offline targets signing:
// init-offline and commit talk to the server; sign never does (it runs
// on an air-gapped machine with the key file); pending re-fetches what
// publish returned.
func (a *app) releaseOfflineCmds() []*cobra.Command {
	var tenantID, in, out string
	var keyFiles []string
	var threshold int
	initOffline := &cobra.Command{
		Use: "init-offline", Short: "Make the tenant's Image repository trust only offline targets keys (the server keeps snapshot and timestamp)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if len(keyFiles) == 0 {
				return usageError{errors.New("--targets-key PUBLIC.pem is required (repeat it for several officers)")}
			}
			req := api.OfflineTargetsRequest{Threshold: threshold}
			for _, f := range keyFiles {
				b, err := readSmallFile(f, maxPublicKeyFile)
				if err != nil {
					return err
				}
				req.PublicKeysPEM = append(req.PublicKeysPEM, string(b))
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var res api.OfflineTargets
			if err := cl.Do(c.Context(), "PUT", tenantPath(tenantID)+"/releases/targets-keys", req, &res); err != nil {
				return err
			}
			if res.PendingTargets != nil && out != "" {
				if err := writeNewFile(out, res.PendingTargets); err != nil {
					return err
				}
			}
			return a.emit(res, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "image root\tversion %d\ntargets keys\t%s\nthreshold\t%d\n", res.RootVersion, strings.Join(res.KeyIDs, ", "), res.Threshold)
				if res.PendingTargets != nil {
					where := "fetch it with ward release pending --out FILE"
					if out != "" {
						where = "written to " + out
					}
					fmt.Fprintf(w, "pending targets\tthe served releases must be re-signed with the offline keys (%s)\n", where)
				}
			})
		},
	}
	initOffline.Flags().StringArrayVar(&keyFiles, "targets-key", nil, "PEM public key of an offline targets key (Ed25519 or ECDSA P-256); repeatable")
	initOffline.Flags().IntVar(&threshold, "threshold", 1, "how many of the targets keys must sign")
	initOffline.Flags().StringVar(&out, "out", "", "where to write targets metadata to re-sign, if releases were served")

	pending := &cobra.Command{
		Use: "pending", Short: "Fetch the unsigned targets metadata awaiting offline signatures", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if out == "" {
				return usageError{errors.New("--out FILE is required")}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var b json.RawMessage // the exact bytes: they are what gets signed
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/releases/pending", nil, &b); err != nil {
				return err
			}
			if err := writeNewFile(out, b); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "pending targets written to %s\n", out)
			return nil
		},
	}
	pending.Flags().StringVar(&out, "out", "", "output file")

	var keyFile, ksSpec, keyName string
	sign := &cobra.Command{
		Use:   "sign",
		Short: "Sign targets metadata with an offline key file or a key in a PKCS#11 token (no server needed: run it air-gapped)",
		Long: `Sign adds the key's signature to TUF targets metadata exported by
ward release publish --out (or ward release pending, or an earlier sign
with another officer's key). It never contacts a server. The key is a file
(--key) or a key that never leaves a PKCS#11 token (--keystore and
--key-name; see ward release offline-key). Check the releases it prints
before carrying the result back for ward release commit.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if in == "" || out == "" || (keyFile == "") == (ksSpec == "") || (ksSpec == "") != (keyName == "") {
				return usageError{errors.New("--in, --out and either --key or --keystore with --key-name are required")}
			}
			data, err := readSmallFile(in, tufrepo.MaxMetadataSize)
			if err != nil {
				return err
			}
			tm, err := metadata.Targets().FromBytes(data)
			if err != nil || tm.Signed.Type != metadata.TARGETS {
				return fmt.Errorf("%s is not TUF targets metadata", in)
			}
			var key tufrepo.Signer
			if keyFile != "" {
				key, err = tufrepo.LoadKeyFile(keyFile)
			} else {
				var closeKS func()
				key, closeKS, err = keystoreSigner(c.Context(), ksSpec, keyName, false)
				if err == nil {
					defer closeKS()
				}
			}
			if err != nil {
				return err
			}
			id, err := tufrepo.KeyID(key)
			if err != nil {
				return err
			}
			signed, err := tufrepo.Sign(data, key)
			if err != nil {
				return err
			}
			if err := writeNewFile(out, signed); err != nil {
				return err
			}
			st, _ := metadata.Targets().FromBytes(signed)
			return a.emit(signedSummary(st, id), func(w *tabwriter.Writer) {
				s := signedSummary(st, id)
				fmt.Fprintf(w, "targets\tversion %d, expires %s\nsigned by\t%s\nsignatures\t%d\n", s.Version, s.Expires, s.KeyID, s.Signatures)
				for _, r := range s.Images {
					fmt.Fprintf(w, "image\t%s\n", r)
				}
				fmt.Fprintf(w, "written\t%s\n", out)
			})
		},
	}
	sign.Flags().StringVar(&in, "in", "", "targets metadata to sign")
	sign.Flags().StringVar(&keyFile, "key", "", "PKCS#8 PEM private key (openssl genpkey; Ed25519 or ECDSA P-256)")
	sign.Flags().StringVar(&out, "out", "", "signed targets metadata to write (must not exist)")
	sign.Flags().StringVar(&ksSpec, "keystore", "", "keystore holding the key instead of --key: pkcs11:module=PATH;token=LABEL;pin-source=FILE")
	sign.Flags().StringVar(&keyName, "key-name", "", "name (PKCS#11 label) of the key in --keystore")

	var generate bool
	offlineKey := &cobra.Command{
		Use:   "offline-key",
		Short: "Make or find an offline targets key in a PKCS#11 token and write its public key",
		Long: `offline-key writes the PEM public key of the key called --key-name in
--keystore, for ward release init-offline --targets-key. With --generate it
first makes an ECDSA P-256 key inside the token; the private key never
leaves it. It never contacts a server.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if ksSpec == "" || keyName == "" || out == "" {
				return usageError{errors.New("--keystore, --key-name and --out are required")}
			}
			key, closeKS, err := keystoreSigner(c.Context(), ksSpec, keyName, generate)
			if err != nil {
				return err
			}
			defer closeKS()
			pub, err := key.PublicKey()
			if err != nil {
				return err
			}
			der, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				return err
			}
			id, err := tufrepo.KeyID(key)
			if err != nil {
				return err
			}
			if err := writeNewFile(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
				return err
			}
			res := struct {
				KeyID   string `json:"key_id"`
				Written string `json:"written"`
			}{id, out}
			return a.emit(res, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "key\t%s in %s\nkey id\t%s\npublic key\t%s\n", keyName, redactSpec(ksSpec), id, out)
			})
		},
	}
	offlineKey.Flags().StringVar(&ksSpec, "keystore", "", "pkcs11:module=PATH;token=LABEL;pin-source=FILE")
	offlineKey.Flags().StringVar(&keyName, "key-name", "", "name (PKCS#11 label) of the key")
	offlineKey.Flags().BoolVar(&generate, "generate", false, "make a new ECDSA P-256 key in the keystore first (refused if the name is taken)")
	offlineKey.Flags().StringVar(&out, "out", "", "where to write the PEM public key (must not exist)")

	commit := &cobra.Command{
		Use: "commit", Short: "Import targets metadata signed offline; it is refused below the targets threshold", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if in == "" {
				return usageError{errors.New("--in SIGNED.json is required")}
			}
			data, err := readSmallFile(in, api.MaxTargetsMetadata)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var res api.TargetsCommitted
			if err := upload(c, cl, tenantPath(tenantID)+"/releases/commit", "application/json", strings.NewReader(string(data)), int64(len(data)), &res); err != nil {
				return err
			}
			return a.emit(res, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "targets\tversion %d committed\n", res.Version)
				for _, r := range res.Releases {
					fmt.Fprintf(w, "serving\t%s for %s (counter %d)\n", r.Release, r.HardwareID, r.ReleaseCounter)
				}
			})
		},
	}
	commit.Flags().StringVar(&in, "in", "", "signed targets metadata (ward release sign --out)")
	for _, c := range []*cobra.Command{initOffline, pending, commit} {
		c.Flags().StringVar(&tenantID, "tenant", "", "tenant ID")
	}
	return []*cobra.Command{initOffline, pending, sign, commit, offlineKey}
}

// keystoreSigner opens the keystore (a PKCS#11 token) and returns
// the key called name as a TUF signer, made first when generate is set.
// Errors never carry the spec's PIN.
func keystoreSigner(ctx context.Context, spec, name string, generate bool) (tufrepo.Signer, func(), error) {
	ks, err := keystore.Open(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("keystore %s: %w", redactSpec(spec), err)
	}
	var k keystore.Key
	if generate {
		k, err = ks.Generate(ctx, name, keystore.ECDSAP256)
	} else {
		k, err = ks.Load(ctx, name)
	}
	if err != nil {
		ks.Close()
		return nil, nil, fmt.Errorf("key %q in %s: %w", name, redactSpec(spec), err)
	}
	s, err := tufrepo.NewSigner(k)
	if err != nil {
		ks.Close()
		return nil, nil, err
	}
	return s, func() { ks.Close() }, nil
}

// redactSpec is a keystore spec fit for output: Spec.String hides an
// inline PIN.
func redactSpec(spec string) string {
	s, err := keystore.ParseSpec(spec)
	if err != nil {
		return "(invalid keystore spec)"
	}
	return s.String()
}

// signedTargets is what `ward release sign` reports: enough for the
// officer to check what they signed.
type signedTargets struct {
	Version    int64    `json:"version"`
	Expires    string   `json:"expires"`
	KeyID      string   `json:"signed_by"`
	Signatures int      `json:"signatures"`
	Images     []string `json:"images"`
}

func signedSummary(t *metadata.Metadata[metadata.TargetsType], keyID string) signedTargets {
	s := signedTargets{Version: t.Signed.Version, Expires: t.Signed.Expires.Format("2006-01-02T15:04:05Z07:00"), KeyID: keyID, Signatures: len(t.Signatures)}
	for p, tf := range t.Signed.Targets {
		if tf.Custom == nil {
			continue
		}
		c, err := ota.ParseCustom(*tf.Custom)
		if err != nil || c.Kind != ota.KindImage {
			continue
		}
		s.Images = append(s.Images, fmt.Sprintf("%s for %s (counter %d, security version %d) %s sha256 %s",
			c.Release, c.HardwareID, c.ReleaseCounter, c.SecurityVersion, p, hex.EncodeToString(tf.Hashes["sha256"])))
	}
	sort.Strings(s.Images)
	return s
}

// writeNewFile writes data to a file that must not exist yet, so signed
// or unsigned metadata is never silently replaced.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
