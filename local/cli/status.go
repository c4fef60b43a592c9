package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
)

// shopStatus is what a running shop's /status says, as far as status
// prints it.
type shopStatus struct {
	NATS    string `json:"nats"`
	Brokers []struct {
		Name   string `json:"name"`
		Stream string `json:"stream"`
		Events uint64 `json:"events"`
		Bytes  uint64 `json:"bytes"`
	} `json:"brokers"`
	Triggers []struct {
		Name         string           `json:"name"`
		Delivered    int64            `json:"delivered"`
		Filtered     int64            `json:"filtered"`
		Retried      int64            `json:"retried"`
		DeadLettered int64            `json:"deadLettered"`
		Dropped      map[string]int64 `json:"dropped"`
		InFlight     int64            `json:"inFlight"`
		Backlog      int              `json:"backlog"`
	} `json:"triggers"`
	Functions []struct {
		Service   string `json:"service"`
		Desired   int    `json:"desired"`
		Ready     int    `json:"ready"`
		InFlight  int    `json:"inFlight"`
		Backlog   int    `json:"backlog"`
		MinScale  int    `json:"minScale"`
		MaxScale  int    `json:"maxScale"`
		Instances []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"instances"`
	} `json:"functions"`
	Orders map[string]int `json:"orders"`
}

func status(ctx context.Context, e *env, args []string) int {
	f := newFlags(e, "status", "[--json]", "Shows a running shop: its Brokers, its Triggers with their counters and backlog,\nand its functions with their instances, as tables.")
	var asJSON bool
	f.BoolVar(&asJSON, "json", false, "print the shop's /status as it is, JSON")
	if code, ok := f.parse(e, args); !ok {
		return code
	}
	var raw json.RawMessage
	if err := getJSON(ctx, f.addr+"/status", &raw); err != nil {
		return fail(e, "status", "%v", err)
	}
	if asJSON {
		fmt.Fprintln(e.stdout, strings.TrimSpace(string(raw)))
		return OK
	}
	var st shopStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return fail(e, "status", "read the status: %v", err)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "BROKER\tSTREAM\tEVENTS\tBYTES\n")
	for _, b := range st.Brokers {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", b.Name, b.Stream, b.Events, b.Bytes)
	}
	fmt.Fprintf(tw, "\nTRIGGER\tDELIVERED\tFILTERED\tRETRIED\tDEAD-LETTERED\tDROPPED\tIN FLIGHT\tBACKLOG\n")
	for _, t := range st.Triggers {
		var dropped int64
		for _, n := range t.Dropped {
			dropped += n
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", t.Name, t.Delivered, t.Filtered, t.Retried, t.DeadLettered, dropped, t.InFlight, t.Backlog)
	}
	fmt.Fprintf(tw, "\nFUNCTION\tREADY\tDESIRED\tSCALE\tIN FLIGHT\tBACKLOG\tINSTANCES\n")
	for _, fn := range st.Functions {
		var names []string
		for _, in := range fn.Instances {
			names = append(names, in.Name+" ("+in.State+")")
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d-%d\t%d\t%d\t%s\n", fn.Service, fn.Ready, fn.Desired, fn.MinScale, fn.MaxScale, fn.InFlight, fn.Backlog, strings.Join(names, ", "))
	}
	if len(st.Orders) > 0 {
		fmt.Fprintf(tw, "\nORDERS\t")
		stages := make([]string, 0, len(st.Orders))
		for s := range st.Orders {
			stages = append(stages, s)
		}
		slices.Sort(stages)
		for _, s := range stages {
			fmt.Fprintf(tw, "%s %d  ", s, st.Orders[s])
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
	return OK
}
