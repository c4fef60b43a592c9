package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

// unit says how a metric's values read and which way is better.
type unit string

const (
	perSecond unit = "events/s" // higher is better
	millis    unit = "ms"       // lower is better
	mebibytes unit = "MiB"      // lower is better
	micros    unit = "µs CPU"   // lower is better
)

// Metric is one row of the table: ours beside its baseline, both measured
// in this run, as medians over the rounds.
type Metric struct {
	Name         string    `json:"name"`
	Unit         unit      `json:"unit"`
	Ours         float64   `json:"ours"`
	OursRuns     []float64 `json:"oursRuns"`
	Baseline     string    `json:"baseline,omitempty"`
	BaselineVal  float64   `json:"baselineValue,omitempty"`
	BaselineRuns []float64 `json:"baselineRuns,omitempty"`
	// Ratio is ours/baseline.
	Ratio float64 `json:"ratio,omitempty"`
	Goal  string  `json:"goal,omitempty"`
	// Pass is nil when the metric has no goal.
	Pass *bool `json:"pass,omitempty"`
}

// Report is what bench/results.json holds.
type Report struct {
	Label     string    `json:"label,omitempty"`
	Time      time.Time `json:"time"`
	GoVersion string    `json:"goVersion"`
	CPUs      int       `json:"cpus"`
	Rounds    int       `json:"rounds"`
	Settings  Settings  `json:"settings"`
	Metrics   []Metric  `json:"metrics"`
	Notes     []string  `json:"notes,omitempty"`
	Elapsed   string    `json:"elapsed"`
}

func newMetric(name string, u unit, ours []float64) Metric {
	return Metric{Name: name, Unit: u, Ours: loadgen.Median(ours), OursRuns: ours}
}

// against sets the baseline and the ratio.
func (m Metric) against(name string, runs []float64) Metric {
	m.Baseline = name
	m.BaselineRuns = runs
	m.BaselineVal = loadgen.Median(runs)
	if m.BaselineVal != 0 {
		m.Ratio = m.Ours / m.BaselineVal
	}
	return m
}

// atLeastRatio is a goal on the ratio to the baseline.
func (m Metric) atLeastRatio(r float64) Metric {
	m.Goal = fmt.Sprintf("≥ %.0f%% of baseline", r*100)
	ok := m.Ratio >= r
	m.Pass = &ok
	return m
}

// atLeast is a goal on the value itself.
func (m Metric) atLeast(limit float64) Metric {
	m.Goal = fmt.Sprintf("≥ %s", format(m.Unit, limit))
	ok := m.Ours >= limit
	m.Pass = &ok
	return m
}

// below is a goal on the value itself.
func (m Metric) below(limit float64) Metric {
	m.Goal = fmt.Sprintf("< %s", format(m.Unit, limit))
	ok := m.Ours < limit
	m.Pass = &ok
	return m
}

func format(u unit, v float64) string {
	switch u {
	case perSecond:
		return fmt.Sprintf("%.0f/s", v)
	case millis:
		if v < 10 {
			return fmt.Sprintf("%.2f ms", v)
		}
		return fmt.Sprintf("%.1f ms", v)
	case mebibytes:
		return fmt.Sprintf("%.1f MiB", v)
	case micros:
		return fmt.Sprintf("%.0f µs", v)
	}
	return fmt.Sprintf("%g %s", v, u)
}

// spread shows a metric's rounds as min–max.
func spread(u unit, runs []float64) string {
	if len(runs) < 2 {
		return ""
	}
	lo, hi := loadgen.Spread(runs)
	lower := format(u, lo)
	for _, suffix := range []string{"/s", " ms", " MiB", " µs"} {
		lower = strings.TrimSuffix(lower, suffix)
	}
	return fmt.Sprintf(" (%s–%s)", lower, format(u, hi))
}

// printTable writes the results table.
func printTable(w io.Writer, r *Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "metric\tours\tbaseline\tratio\tgoal\tresult\n")
	for _, m := range r.Metrics {
		base, ratio := "—", "—"
		if m.Baseline != "" {
			base = fmt.Sprintf("%s%s: %s", format(m.Unit, m.BaselineVal), spread(m.Unit, m.BaselineRuns), m.Baseline)
			ratio = fmt.Sprintf("%.2f", m.Ratio)
		}
		goal, res := "—", "—"
		if m.Goal != "" {
			goal = m.Goal
		}
		if m.Pass != nil {
			res = "FAIL"
			if *m.Pass {
				res = "pass"
			}
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\t%s\n", m.Name, format(m.Unit, m.Ours), spread(m.Unit, m.OursRuns), base, ratio, goal, res)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%d round(s) per metric, medians with (min–max); %d CPUs, %s; total %s\n", r.Rounds, r.CPUs, r.GoVersion, r.Elapsed)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// writeJSON writes the report to path, creating its directory.
func writeJSON(path string, r *Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

func newReport(label string, s Settings) *Report {
	return &Report{Label: label, Time: time.Now().UTC(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Rounds: s.Rounds, Settings: s}
}
