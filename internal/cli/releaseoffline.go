package cli

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// maxPublicKeyFile bounds a PEM public key file `release init-offline`
// reads: one key is a few hundred bytes.
const maxPublicKeyFile = 16 << 10

// readPublicKeys reads PEM public key files.
func readPublicKeys(files []string) ([]string, error) {
	var out []string
	for _, f := range files {
		b, err := readSmallFile(f, maxPublicKeyFile)
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return out, nil
}

// printImageKeys shows who holds each role, what awaits signatures and
// where it was written.
func printImageKeys(w *tabwriter.Writer, k *api.ImageKeys, out string) {
	fmt.Fprintf(w, "image root\tversion %d, expires %s\n", k.RootVersion, k.RootExpires.Format("2006-01-02"))
	roles := func(prefix string, rs []api.ImageRole) {
		for _, r := range rs {
			where := "offline"
			if r.Online {
				where = "held by the server"
			}
			fmt.Fprintf(w, "%s%s\t%d of %s (%s)\n", prefix, r.Role, r.Threshold, strings.Join(r.KeyIDs, ", "), where)
		}
	}
	roles("", k.Roles)
	where := func(what string) string {
		if out != "" {
			return "written to " + out
		}
		return "fetch it with ward release pending " + what + "--out FILE"
	}
	if k.PendingRoot != nil {
		if p, err := metadata.Root().FromBytes(k.PendingRoot); err == nil {
			fmt.Fprintf(w, "pending root\tversion %d awaits signatures by the current root keys and its own (%s)\n", p.Signed.Version, where("--root "))
			roles("  new ", k.PendingRootRoles)
		}
	}
	if k.PendingTargets != nil {
		fmt.Fprintf(w, "pending targets\tthe served targets metadata must be re-signed with the new targets keys (%s)\n", where(""))
	}
}

// releaseOfflineCmds are the verbs of offline signing: init-offline,
// keys, renew-root, pending and commit talk to the server; sign and
// offline-key never do (they run on an air-gapped machine).
func (a *app) releaseOfflineCmds() []*cobra.Command {
	var tenantID, in, out string
	var rootFiles, targetsFiles []string
	var rootThreshold, targetsThreshold int
	// writePending writes the document awaiting signatures, if any.
	writePending := func(k *api.ImageKeys) error {
		doc := k.PendingRoot
		if doc == nil {
			doc = k.PendingTargets
		}
		if doc == nil || out == "" {
			return nil
		}
		return atomicfile.CreateNew(out, doc, 0o644)
	}
	initOffline := &cobra.Command{
		Use:   "init-offline",
		Short: "Move the tenant's Image root and/or targets role to offline keys (the server keeps snapshot and timestamp)",
		Long: `init-offline makes a new Image root listing the given offline keys.

--targets-key alone: while the server still holds the root key it signs
the new root and imports it at once; from then on every release waits for
ward release sign and ward release commit.

--root-key: the new root must also be signed by a threshold of the new
root keys, so it is staged (written to --out): sign it with ward release
sign (air-gapped) and import it with ward release commit. The server then
destroys its own root key; every later root change (ward release
init-offline, ward release renew-root) needs the offline root keys.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if len(rootFiles) == 0 && len(targetsFiles) == 0 {
				return usageError{errors.New("--root-key or --targets-key PUBLIC.pem is required (repeat it for several officers)")}
			}
			var req api.ImageKeysRequest
			var err error
			if req.RootKeysPEM, err = readPublicKeys(rootFiles); err != nil {
				return err
			}
			if req.TargetsKeysPEM, err = readPublicKeys(targetsFiles); err != nil {
				return err
			}
			if len(rootFiles) > 0 {
				req.RootThreshold = rootThreshold
			}
			if len(targetsFiles) > 0 {
				req.TargetsThreshold = targetsThreshold
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var res api.ImageKeys
			if err := cl.Do(c.Context(), "PUT", tenantPath(tenantID)+"/releases/keys", req, &res); err != nil {
				return err
			}
			if err := writePending(&res); err != nil {
				return err
			}
			return a.emit(res, func(w *tabwriter.Writer) { printImageKeys(w, &res, out) })
		},
	}
	initOffline.Flags().StringArrayVar(&rootFiles, "root-key", nil, "PEM public key of an offline root key (Ed25519 or ECDSA P-256); repeatable")
	initOffline.Flags().IntVar(&rootThreshold, "root-threshold", 1, "how many of the root keys must sign a root")
	initOffline.Flags().StringArrayVar(&targetsFiles, "targets-key", nil, "PEM public key of an offline targets key (Ed25519 or ECDSA P-256); repeatable")
	initOffline.Flags().IntVar(&targetsThreshold, "targets-threshold", 1, "how many of the targets keys must sign a release")
	initOffline.Flags().StringVar(&out, "out", "", "where to write the root or targets metadata awaiting signatures, if any (must not exist)")

	keys := &cobra.Command{
		Use: "keys", Short: "Show who holds each role of the tenant's Image repository", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var res api.ImageKeys
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/releases/keys", nil, &res); err != nil {
				return err
			}
			return a.emit(res, func(w *tabwriter.Writer) { printImageKeys(w, &res, "") })
		},
	}

	renewRoot := &cobra.Command{
		Use: "renew-root", Short: "Make the next Image root with the same keys and a fresh expiry (staged for signatures when the root is offline)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var res api.ImageKeys
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/releases/root-renewal", nil, &res); err != nil {
				return err
			}
			if err := writePending(&res); err != nil {
				return err
			}
			return a.emit(res, func(w *tabwriter.Writer) { printImageKeys(w, &res, out) })
		},
	}
	renewRoot.Flags().StringVar(&out, "out", "", "where to write the root awaiting signatures, if staged (must not exist)")

	var root bool
	pending := &cobra.Command{
		Use: "pending", Short: "Fetch the unsigned targets (or, with --root, root) metadata awaiting offline signatures", Args: cobra.NoArgs,
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
			path, what := "/releases/pending", "targets"
			if root {
				path, what = "/releases/pending-root", "root"
			}
			var b json.RawMessage // the exact bytes: they are what gets signed
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+path, nil, &b); err != nil {
				return err
			}
			if err := atomicfile.CreateNew(out, b, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "pending %s written to %s\n", what, out)
			return nil
		},
	}
	pending.Flags().StringVar(&out, "out", "", "output file")
	pending.Flags().BoolVar(&root, "root", false, "fetch the staged root instead of targets")

	var keyFile, ksSpec, keyName string
	sign := &cobra.Command{
		Use:   "sign",
		Short: "Sign targets or root metadata with an offline key file or a key in a PKCS#11 token (no server needed: run it air-gapped)",
		Long: `Sign adds the key's signature to TUF targets metadata exported by
ward release publish --out (or ward release pending, or an earlier sign
with another officer's key), or to a staged Image root (ward release
init-offline --out, renew-root --out or pending --root). It never
contacts a server. The key is a file (--key) or a key that never leaves a
PKCS#11 token (--keystore and --key-name; see ward release offline-key).
Check the releases or the keys it prints before carrying the result back
for ward release commit.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if in == "" || out == "" || (keyFile == "") == (ksSpec == "") || (ksSpec == "") != (keyName == "") {
				return usageError{errors.New("--in, --out and either --key or --keystore with --key-name are required")}
			}
			data, err := readSmallFile(in, tufrepo.MaxMetadataSize)
			if err != nil {
				return err
			}
			kind, err := metadataKind(data)
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
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
			if err := atomicfile.CreateNew(out, signed, 0o644); err != nil {
				return err
			}
			if kind == metadata.ROOT {
				rt, err := metadata.Root().FromBytes(signed)
				if err != nil {
					return err
				}
				s := rootSummary(rt, id)
				return a.emit(s, func(w *tabwriter.Writer) {
					fmt.Fprintf(w, "root metadata\tversion %d, expires %s\nsigned by\t%s\nsignatures\t%d\n", s.Version, s.Expires, s.KeyID, s.Signatures)
					for _, r := range s.Roles {
						fmt.Fprintf(w, "%s\t%d of %s\n", r.Role, r.Threshold, strings.Join(r.KeyIDs, ", "))
					}
					fmt.Fprintf(w, "written\t%s\n", out)
				})
			}
			st, err := metadata.Targets().FromBytes(signed)
			if err != nil {
				return err
			}
			s := signedSummary(st, id)
			return a.emit(s, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "targets\tversion %d, expires %s\nsigned by\t%s\nsignatures\t%d\n", s.Version, s.Expires, s.KeyID, s.Signatures)
				for _, r := range s.Images {
					fmt.Fprintf(w, "image\t%s\n", r)
				}
				fmt.Fprintf(w, "written\t%s\n", out)
			})
		},
	}
	sign.Flags().StringVar(&in, "in", "", "targets or root metadata to sign")
	sign.Flags().StringVar(&keyFile, "key", "", "PKCS#8 PEM private key (openssl genpkey; Ed25519 or ECDSA P-256)")
	sign.Flags().StringVar(&out, "out", "", "signed metadata to write (must not exist)")
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
			if err := atomicfile.CreateNew(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
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
		Use: "commit", Short: "Import targets or root metadata signed offline; it is refused below the threshold", Args: cobra.NoArgs,
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
			kind, err := metadataKind(data)
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if kind == metadata.ROOT {
				var res api.ImageKeys
				if err := upload(c, cl, tenantPath(tenantID)+"/releases/root-commit", "application/json", strings.NewReader(string(data)), int64(len(data)), &res); err != nil {
					return err
				}
				if err := writePending(&res); err != nil {
					return err
				}
				return a.emit(res, func(w *tabwriter.Writer) {
					fmt.Fprintf(w, "root\tversion %d committed\n", res.RootVersion)
					printImageKeys(w, &res, out)
				})
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
	commit.Flags().StringVar(&in, "in", "", "signed targets or root metadata (ward release sign --out)")
	commit.Flags().StringVar(&out, "out", "", "for a root that changed the targets keys: where to write the served targets to re-sign (must not exist)")
	for _, c := range []*cobra.Command{initOffline, keys, renewRoot, pending, commit} {
		c.Flags().StringVar(&tenantID, "tenant", "", "tenant ID")
	}
	return []*cobra.Command{initOffline, keys, renewRoot, pending, sign, commit, offlineKey}
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

// metadataKind is the _type of TUF metadata this command signs or
// commits: root or targets.
func metadataKind(data []byte) (string, error) {
	var env struct {
		Signed struct {
			Type string `json:"_type"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		return "", errors.New("not TUF metadata (JSON)")
	}
	switch env.Signed.Type {
	case metadata.ROOT:
		if _, err := metadata.Root().FromBytes(data); err != nil {
			return "", fmt.Errorf("not valid TUF root metadata: %w", err)
		}
	case metadata.TARGETS:
		if _, err := metadata.Targets().FromBytes(data); err != nil {
			return "", fmt.Errorf("not valid TUF targets metadata: %w", err)
		}
	default:
		return "", errors.New("not TUF targets or root metadata")
	}
	return env.Signed.Type, nil
}

// signedRoot is what `ward release sign` reports for a root: the keys
// the officer is vouching for.
type signedRoot struct {
	Version    int64           `json:"version"`
	Expires    string          `json:"expires"`
	KeyID      string          `json:"signed_by"`
	Signatures int             `json:"signatures"`
	Roles      []api.ImageRole `json:"roles"`
}

func rootSummary(r *metadata.Metadata[metadata.RootType], keyID string) signedRoot {
	s := signedRoot{Version: r.Signed.Version, Expires: r.Signed.Expires.Format("2006-01-02T15:04:05Z07:00"), KeyID: keyID, Signatures: len(r.Signatures)}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if rr := r.Signed.Roles[role]; rr != nil {
			s.Roles = append(s.Roles, api.ImageRole{Role: role, KeyIDs: rr.KeyIDs, Threshold: rr.Threshold})
		}
	}
	return s
}
