package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

func (a *app) schemaCmd() *cobra.Command {
	c := &cobra.Command{Use: "schema", Short: "Register and list telemetry schemas"}
	var tenantID, file, id string
	var version uint32
	c.PersistentFlags().StringVar(&tenantID, "tenant", "", "tenant ID")
	reg := &cobra.Command{
		Use: "register", Short: "Register a schema version (a new version must stay backward compatible)", Args: cobra.NoArgs,
		Example: "  ward schema register --tenant acme --file temp.json --id temp --version 2",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if file == "" || id == "" || version == 0 {
				return usageError{errors.New("--file, --id and --version are required")}
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
			var s api.SchemaInfo
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/schemas", api.RegisterSchemaRequest{ID: id, Version: version, Schema: b}, &s); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "registered schema %s version %d\n", s.ID, s.Version)
			return nil
		},
	}
	reg.Flags().StringVar(&file, "file", "", "JSON Schema file")
	reg.Flags().StringVar(&id, "id", "", "schema ID")
	reg.Flags().Uint32Var(&version, "version", 0, "version (1, 2, ...)")
	list := &cobra.Command{
		Use: "list", Short: "List schemas", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var ss []api.SchemaInfo
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/schemas", nil, &ss); err != nil {
				return err
			}
			return a.emit(ss, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tVERSION\tREGISTERED")
				for _, s := range ss {
					fmt.Fprintf(w, "%s\t%d\t%s\n", s.ID, s.Version, s.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	c.AddCommand(reg, list)
	return c
}

func (a *app) telemetryCmd(tenant *string) *cobra.Command {
	var limit int
	c := &cobra.Command{
		Use: "telemetry DEVICE", Short: "Show a device's recent verified telemetry (confidential fields are never shown)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.tenantClient(*tenant)
			if err != nil {
				return err
			}
			var rs []api.Reading
			if err := cl.Do(c.Context(), "GET", tenantPath(*tenant)+"/devices/"+url.PathEscape(args[0])+"/telemetry?limit="+fmt.Sprint(limit), nil, &rs); err != nil {
				return err
			}
			return a.emit(rs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SEQ\tTIME\tSTREAM\tSCHEMA\tPAYLOAD")
				for _, r := range rs {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s/v%d\t%s\n", r.Seq, r.Time.Format(time.RFC3339), r.Stream, r.SchemaID, r.SchemaVersion, r.Payload)
				}
			})
		},
	}
	c.Flags().IntVar(&limit, "limit", 20, "how many readings")
	return c
}
