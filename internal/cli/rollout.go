package cli

import (
	"errors"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/ota/rollout"
)

// rolloutCmd is `ward rollout create|approve|pause|resume|abort|status|list`.
func (a *app) rolloutCmd() *cobra.Command {
	root := &cobra.Command{Use: "rollout", Short: "Staged firmware rollouts: canary, stages, health gate, approval"}
	var tenantID, file, reason string
	create := &cobra.Command{
		Use: "create", Short: "Create a rollout from a YAML spec (-f spec.yaml)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireTenant(tenantID); err != nil {
				return err
			}
			if file == "" {
				return usageError{errors.New("-f spec.yaml is required")}
			}
			spec, err := readSmallFile(file, rollout.MaxSpecSize)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var st api.RolloutStatus
			if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/rollouts", api.RolloutRequest{Spec: string(spec)}, &st); err != nil {
				return err
			}
			return a.emit(st, func(w *tabwriter.Writer) { printRollout(w, &st) })
		},
	}
	create.Flags().StringVarP(&file, "file", "f", "", "rollout spec (YAML)")
	cmds := []*cobra.Command{create}
	for _, verb := range []string{"approve", "pause", "resume", "abort"} {
		cmd := &cobra.Command{
			Use: verb + " ID", Short: verb + " a rollout", Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				cl, err := a.tenantClient(tenantID)
				if err != nil {
					return err
				}
				var st api.RolloutStatus
				if err := cl.Do(c.Context(), "POST", tenantPath(tenantID)+"/rollouts/"+url.PathEscape(args[0])+"/"+verb,
					api.RolloutCommandRequest{Reason: reason}, &st); err != nil {
					return err
				}
				return a.emit(st, func(w *tabwriter.Writer) { printRollout(w, &st) })
			},
		}
		if verb == "pause" || verb == "abort" {
			cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")
		}
		cmds = append(cmds, cmd)
	}
	var watch time.Duration
	status := &cobra.Command{
		Use: "status ID", Short: "A rollout's progress, with per-phase counts (--watch: live until it completes or aborts)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if watch < 0 || (watch > 0 && watch < 100*time.Millisecond) {
				return usageError{errors.New("--watch must be at least 100ms")}
			}
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			for {
				var st api.RolloutStatus
				if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/rollouts/"+url.PathEscape(args[0]), nil, &st); err != nil {
					if watch > 0 && c.Context().Err() != nil {
						return nil // interrupted
					}
					return err
				}
				if watch > 0 && a.output != "json" {
					fmt.Fprintf(a.stdout, "--- %s\n", time.Now().Format(time.TimeOnly))
				}
				if err := a.emit(st, func(w *tabwriter.Writer) { printRollout(w, &st) }); err != nil {
					return err
				}
				if watch == 0 || st.State == rollout.StateCompleted || st.State == rollout.StateAborted {
					return nil
				}
				select {
				case <-c.Context().Done():
					return nil
				case <-time.After(watch):
				}
			}
		},
	}
	status.Flags().DurationVar(&watch, "watch", 0, "refresh every interval (e.g. 2s) until the rollout completes or aborts, or Ctrl-C")
	list := &cobra.Command{
		Use: "list", Short: "List rollouts", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.tenantClient(tenantID)
			if err != nil {
				return err
			}
			var rs []api.RolloutStatus
			if err := cl.Do(c.Context(), "GET", tenantPath(tenantID)+"/rollouts", nil, &rs); err != nil {
				return err
			}
			return a.emit(rs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tRELEASE\tSTATE\tPHASE\tDEVICES\tSUCCEEDED\tFAILED")
				for _, r := range rs {
					ok, bad := 0, 0
					for _, p := range r.Phases {
						ok += p.Succeeded
						bad += p.Failed + p.RolledBack + p.TimedOut
					}
					phase := ""
					if r.Phase < len(r.Phases) {
						phase = r.Phases[r.Phase].Name
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\n", r.ID, r.Release, r.State, phase, r.Devices, ok, bad)
				}
			})
		},
	}
	cmds = append(cmds, status, list)
	for _, c := range cmds {
		c.Flags().StringVar(&tenantID, "tenant", "", "tenant ID")
		root.AddCommand(c)
	}
	return root
}

func printRollout(w *tabwriter.Writer, st *api.RolloutStatus) {
	fmt.Fprintf(w, "rollout\t%s\nrelease\t%s\nstate\t%s\n", st.ID, st.Release, st.State)
	if st.Reason != "" {
		fmt.Fprintf(w, "reason\t%s\n", st.Reason)
	}
	fmt.Fprintf(w, "created by\t%s\n", st.Creator)
	if st.Approver != "" {
		fmt.Fprintf(w, "approved by\t%s\n", st.Approver)
	}
	fmt.Fprintln(w, "\nPHASE\tPERCENT\tDEVICES\tPENDING\tIN PROGRESS\tSUCCEEDED\tFAILED\tROLLED BACK\tTIMED OUT")
	for i, p := range st.Phases {
		mark := ""
		if i == st.Phase {
			mark = " *"
		}
		fmt.Fprintf(w, "%s%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", p.Name, mark, p.Percent, p.Devices, p.Pending, p.InProgress, p.Succeeded, p.Failed, p.RolledBack, p.TimedOut)
	}
	for _, f := range st.Failures {
		fmt.Fprintf(w, "failed device\t%s (%s)\n", f.Device, f.State)
	}
}
