// Command bench measures koffeeshop beside the limits of the machine it runs
// on, all in one run: the Broker ingress against a no-op HTTP handler and
// raw JetStream publishes, a Trigger's dispatch against a raw JetStream
// consumer, the end-to-end latency of an order through the three functions
// at a fixed offered load, the cold start from zero and the runner's idle
// memory. It prints a table and writes the numbers as JSON.
//
//	go run ./local/bench -out bench/results.json
//
// Everything runs on 127.0.0.1 with random ports; every load is bounded in
// count and in time.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Settings are the knobs of a run, recorded with its results.
type Settings struct {
	Rounds              int           `json:"rounds"`
	IngressConcurrency  int           `json:"ingressConcurrency"`
	IngressCount        int           `json:"ingressCount"`
	DispatchCount       int           `json:"dispatchCount"`
	DispatchConcurrency int           `json:"dispatchConcurrency"`
	E2ERate             float64       `json:"e2eRate"`
	E2ELightRate        float64       `json:"e2eLightRate"`
	E2EDuration         time.Duration `json:"e2eDurationNanos"`
	E2ESaturationCount  int           `json:"e2eSaturationCount"`
	ColdRounds          int           `json:"coldRounds"`
	Limit               time.Duration `json:"limitNanos"`
}

type options struct {
	Settings
	out        string
	label      string
	configDir  string
	only       []string
	profileDir string
	verbose    bool
	debug      bool
	board      bool
}

func main() {
	os.Exit(run())
}

func run() int {
	var o options
	var only string
	flag.StringVar(&o.out, "out", "bench/results.json", "write the results as JSON here (empty: do not write)")
	flag.StringVar(&o.label, "label", "", "a label stored with the results, e.g. before or after")
	flag.StringVar(&o.configDir, "config", "config", "directory of Knative manifests")
	flag.StringVar(&only, "only", "", "comma-separated parts to run: ingress, dispatch, e2e, tracing, cold, idle (default all)")
	flag.StringVar(&o.profileDir, "cpuprofile-dir", "", "write a CPU profile of each part's koffeeshop runs into this directory")
	flag.BoolVar(&o.verbose, "v", false, "log progress")
	flag.BoolVar(&o.debug, "debug", false, "also show koffeeshop's warnings and the functions' output")
	flag.BoolVar(&o.board, "board", true, "run the shops with the web board, as make run does")
	flag.IntVar(&o.Rounds, "rounds", 3, "rounds of each measurement; the table shows medians")
	flag.IntVar(&o.IngressConcurrency, "ingress-concurrency", 64, "HTTP requests (and JetStream publishes) in flight")
	flag.IntVar(&o.IngressCount, "ingress-count", 20000, "requests per ingress round")
	flag.IntVar(&o.DispatchCount, "dispatch-count", 20000, "events per dispatch round")
	flag.IntVar(&o.DispatchConcurrency, "dispatch-concurrency", 100, "the Trigger's delivery concurrency")
	flag.Float64Var(&o.E2ERate, "e2e-rate", 1000, "orders per second offered in the end-to-end rounds")
	flag.Float64Var(&o.E2ELightRate, "e2e-light-rate", 100, "orders per second of the light end-to-end rounds (0: none)")
	flag.DurationVar(&o.E2EDuration, "e2e-duration", 5*time.Second, "length of each end-to-end round")
	flag.IntVar(&o.E2ESaturationCount, "e2e-saturation-count", 20000, "orders of the saturated end-to-end round (0: none)")
	flag.IntVar(&o.ColdRounds, "cold-rounds", 5, "cold starts measured")
	flag.DurationVar(&o.Limit, "limit", 30*time.Second, "time limit of any one load run")
	flag.Parse()
	o.only = strings.FieldsFunc(only, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if o.Rounds < 1 || o.IngressCount < 1 || o.E2ESaturationCount < 0 || o.DispatchCount < 1 || o.E2ERate <= 0 || o.E2EDuration <= 0 || o.ColdRounds < 1 {
		fmt.Fprintln(os.Stderr, "bench: rounds, counts, rate and durations must be positive")
		return 2
	}
	for _, p := range o.only {
		if !slices.Contains(parts, p) {
			fmt.Fprintf(os.Stderr, "bench: unknown part %q (want %s)\n", p, strings.Join(parts, ", "))
			return 2
		}
	}

	level := slog.LevelError
	if o.debug {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	progress := slog.New(slog.DiscardHandler)
	if o.verbose {
		progress = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Every goroutine of the bench is its own (the load, the observers)
	// unless started for a shop (see startShop): CPU profiles tell them
	// apart by this label.
	ctx = pprof.WithLabels(ctx, pprof.Labels(partLabel, partLoad))
	pprof.SetGoroutineLabels(ctx)

	b := &bench{opts: o, log: log, progress: progress}
	if err := b.run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	printTable(os.Stdout, b.report)
	if o.out != "" {
		if err := writeJSON(o.out, b.report); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Printf("results written to %s\n", o.out)
	}
	return 0
}

var parts = []string{"ingress", "dispatch", "e2e", "tracing", "cold", "idle"}

type bench struct {
	opts     options
	log      *slog.Logger // koffeeshop's own logs
	progress *slog.Logger
	report   *Report
	tmp      string
	binDir   string // the function executables, built once
}

func (b *bench) wants(part string) bool {
	return len(b.opts.only) == 0 || slices.Contains(b.opts.only, part)
}

func (b *bench) run(ctx context.Context) error {
	start := time.Now()
	b.report = newReport(b.opts.label, b.opts.Settings)
	tmp, err := os.MkdirTemp("", "koffeeshop-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	b.tmp = tmp
	steps := []struct {
		part string
		run  func(context.Context) ([]Metric, error)
	}{
		{"ingress", b.ingress},
		{"dispatch", b.dispatch},
		{"e2e", b.endToEnd},
		{"tracing", b.tracingCost},
		{"cold", b.coldStart},
		{"idle", b.idleMemory},
	}
	for _, s := range steps {
		if !b.wants(s.part) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		b.progress.Info("measuring", "part", s.part)
		ms, err := s.run(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", s.part, err)
		}
		b.report.Metrics = append(b.report.Metrics, ms...)
	}
	b.report.Elapsed = time.Since(start).Round(time.Second).String()
	return nil
}

// profiled wraps f to run under a CPU profile written to
// <cpuprofile-dir>/<part>.prof when profiles are asked for.
func (b *bench) profiled(part string, f func() error) func() error {
	if b.opts.profileDir == "" {
		return f
	}
	return func() error {
		if err := os.MkdirAll(b.opts.profileDir, 0o755); err != nil {
			return fmt.Errorf("profile dir: %w", err)
		}
		fh, err := os.Create(filepath.Join(b.opts.profileDir, part+".prof"))
		if err != nil {
			return fmt.Errorf("profile: %w", err)
		}
		if err := pprof.StartCPUProfile(fh); err != nil {
			fh.Close()
			return fmt.Errorf("profile: %w", err)
		}
		ferr := f()
		pprof.StopCPUProfile()
		return errors.Join(ferr, fh.Close())
	}
}
