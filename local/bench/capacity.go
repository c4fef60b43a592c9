package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

// The pprof label that tells the shop's goroutines (the runner, its
// embedded NATS, dispatchers and ingress) from the bench's own (the load
// generator and the observer), which share the process.
const (
	partLabel = "part"
	partShop  = "shop"
	partLoad  = "load"
)

// hops attribute a CPU sample of the shop to the first hop whose frame its
// stack holds, leaf first: the order is what makes a nested frame win.
var hops = []struct{ name, frame string }{
	{"ingress: store (encode, publish, wait for the ack)", "broker.(*Store).Publish"},
	{"ingress: read, decode, validate", "broker.(*Ingress).ServeHTTP"},
	{"dispatch: HTTP request to the function", "triggers.(*Dispatcher).attempt"},
	{"dispatch: decode, filter, ack", "triggers.(*Dispatcher).handle"},
	{"dispatch: pull from JetStream", "nats.go/jetstream."},
	{"board: follow the stream", "board.(*Board)."},
	{"NATS server (JetStream)", "nats-server/v2/"},
	{"NATS client connection", "nats-io/nats.go."},
	{"HTTP server connections", "net/http.(*conn)."},
	{"HTTP client connections", "net/http.(*persistConn)."},
}

// capacity measures the orders the shop completes per second when it is
// saturated: a closed loop keeps inFlight orders placed and waits for each
// to be notified. It reports the CPU each order costs in every process,
// and, from a CPU profile of the runner, where the runner's share goes.
func (b *bench) capacity(ctx context.Context, s *shop, place func(context.Context, string) error) ([]Metric, error) {
	const inFlight = 512
	n := b.opts.E2ESaturationCount
	fns := functionCPU(s)
	var prof bytes.Buffer
	if err := pprof.StartCPUProfile(&prof); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	self := cpuTime()
	res, err := loadgen.Run(ctx, loadgen.Config{Count: n, Duration: b.opts.Limit, Concurrency: inFlight},
		func(ctx context.Context, i int) error {
			ctx, cancel := context.WithTimeout(ctx, b.opts.Limit)
			defer cancel()
			return place(ctx, fmt.Sprintf("sat-%d", i))
		})
	self = cpuTime() - self
	pprof.StopCPUProfile()
	if err := check("saturation", res, err); err != nil {
		return nil, err
	}
	b.progress.Info("e2e saturation", "result", res.String())
	fnCPU := fns()
	if b.opts.profileDir != "" {
		if err := os.MkdirAll(b.opts.profileDir, 0o755); err == nil {
			_ = os.WriteFile(filepath.Join(b.opts.profileDir, "saturation.prof"), prof.Bytes(), 0o644)
		}
	}
	p, err := profile.Parse(&prof)
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	shopShare, byHop := attribute(p)
	orders := float64(res.Done)
	perOrder := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / orders }

	runner := time.Duration(float64(self) * shopShare)
	total := runner
	lines := []string{fmt.Sprintf("runner process (ingress, dispatchers, embedded NATS, board): %.0f µs", perOrder(runner))}
	for _, h := range byHop {
		lines = append(lines, fmt.Sprintf("  %s: %.0f µs", h.name, perOrder(time.Duration(float64(runner)*h.share))))
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range fnCPU {
			if !yield(k) {
				return
			}
		}
	})
	for _, name := range names {
		total += fnCPU[name]
		lines = append(lines, fmt.Sprintf("function %s: %.0f µs", name, perOrder(fnCPU[name])))
	}
	b.report.Notes = append(b.report.Notes, fmt.Sprintf("CPU per order at saturation, %.0f µs in all (the bench's own load generator and observer left out):\n  %s",
		perOrder(total), strings.Join(lines, "\n  ")))
	return []Metric{
		newMetric("orders completed/s, saturated", perSecond, []float64{res.Throughput()}).atLeast(1800),
		newMetric("CPU per order, all processes", micros, []float64{perOrder(total)}),
	}, nil
}

type hopShare struct {
	name  string
	share float64 // of the shop's samples
}

// attribute returns the shop's share of the profile's CPU samples and how
// its samples divide among the hops.
func attribute(p *profile.Profile) (float64, []hopShare) {
	var all, shop int64
	by := map[string]int64{}
	for _, s := range p.Sample {
		v := s.Value[len(s.Value)-1]
		all += v
		if part := s.Label[partLabel]; len(part) > 0 && part[0] == partLoad {
			continue
		}
		shop += v
		by[hopOf(s)] += v
	}
	if all == 0 || shop == 0 {
		return 0, nil
	}
	out := make([]hopShare, 0, len(by))
	for name, v := range by {
		out = append(out, hopShare{name, float64(v) / float64(shop)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].share > out[j].share })
	return float64(shop) / float64(all), out
}

func hopOf(s *profile.Sample) string {
	var frames []string
	for _, loc := range s.Location {
		for _, l := range loc.Line {
			if l.Function != nil {
				frames = append(frames, l.Function.Name)
			}
		}
	}
	for _, h := range hops {
		for _, f := range frames {
			if strings.Contains(f, h.frame) {
				return h.name
			}
		}
	}
	for _, f := range frames {
		if strings.HasPrefix(f, "runtime.gcBgMarkWorker") || strings.HasPrefix(f, "runtime.bgsweep") || strings.HasPrefix(f, "runtime.bgscavenge") {
			return "Go runtime: garbage collection"
		}
	}
	return "other"
}

// functionCPU reads the CPU time of every function instance now and
// returns a func that gives what each Service's instances used since.
func functionCPU(s *shop) func() map[string]time.Duration {
	start := map[int]time.Duration{}
	for _, f := range s.Status().Functions {
		for _, in := range f.Instances {
			start[in.PID] = procCPU(in.PID)
		}
	}
	return func() map[string]time.Duration {
		out := map[string]time.Duration{}
		for _, f := range s.Status().Functions {
			for _, in := range f.Instances {
				out[f.Service] += procCPU(in.PID) - start[in.PID]
			}
		}
		return out
	}
}

// procCPU is the user and system CPU time of process pid, from
// /proc/<pid>/stat; 0 when it cannot be read.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: the fields start after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	// Linux reports clock ticks of 1/100 s (USER_HZ) on every platform Go runs on.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
