package cli

import (
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
)

// errChainBroken makes `ward audit verify` exit non-zero after printing.
type errChainBroken struct{ v api.AuditVerification }

func (e errChainBroken) Error() string {
	return fmt.Sprintf("audit chain broken at entry %d: %s", e.v.BrokenAt, e.v.Reason)
}

func (a *app) auditCmd() *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Read and verify the hash-chained audit log"}
	var tenantID string
	var after int64
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List audit entries", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if tenantID != "" {
				q.Set("tenant", tenantID)
			}
			q.Set("after", strconv.FormatInt(after, 10))
			q.Set("limit", strconv.Itoa(limit))
			var es []api.AuditEntry
			if err := cl.Do(c.Context(), "GET", "/api/v1/audit?"+q.Encode(), nil, &es); err != nil {
				return err
			}
			return a.emit(es, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SEQ\tTIME\tACTOR\tACTION\tTARGET\tTENANT\tRESULT\tDETAIL")
				for _, e := range es {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339), e.Actor, e.Action,
						dash(e.Target), dash(e.Tenant), e.Result, dash(e.Detail))
				}
			})
		},
	}
	list.Flags().StringVar(&tenantID, "tenant", "", "only this tenant's entries")
	list.Flags().Int64Var(&after, "after", 0, "only entries after this sequence number")
	list.Flags().IntVar(&limit, "limit", 1000, "at most this many entries (1-10000)")
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Verify the whole chain; exit 0 if intact, 1 with the first broken entry otherwise",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var v api.AuditVerification
			if err := cl.Do(c.Context(), "GET", "/api/v1/audit/verify", nil, &v); err != nil {
				return err
			}
			if err := a.emit(v, func(w *tabwriter.Writer) {
				if v.OK {
					fmt.Fprintf(w, "audit chain intact: %d entries, head %s\n", v.Entries, v.Head)
				}
			}); err != nil {
				return err
			}
			if !v.OK {
				return errChainBroken{v}
			}
			return nil
		},
	}
	c.AddCommand(list, verify)
	return c
}
