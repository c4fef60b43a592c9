// Package loadgen is a bounded load generator: it runs an operation (an
// HTTP request, a publish, a whole order) a fixed number of times within a
// time limit, either open loop at a fixed offered rate or closed loop at a
// fixed concurrency, and records each operation's latency.
//
// Open loop measures latency from when an operation was due, not from when
// a free worker got to it, so a stalled system shows up in the percentiles
// instead of slowing the load down (no coordinated omission).
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// tallyShards is how many tallies the workers of a run share.
const tallyShards = 8

// Op performs operation number i (0-based) and reports whether it failed.
type Op func(ctx context.Context, i int) error

// Config bounds one run. Count and Duration are both required: a run stops
// at whichever comes first.
type Config struct {
	// Count is the number of operations to run.
	Count int
	// Duration bounds the run's wall time; operations still running then
	// see their context cancelled.
	Duration time.Duration
	// Concurrency is the most operations in flight at once (the number of
	// workers); default 1.
	Concurrency int
	// Rate, when positive, offers Rate operations per second whatever the
	// latency (open loop). Zero runs each worker back to back (closed loop).
	Rate float64
}

// Result is what a run measured.
type Result struct {
	// Done and Failed count the operations that completed and that
	// returned an error; Skipped were never started (the time ran out).
	Done, Failed, Skipped int
	// Elapsed is from the first operation's start to the last one's end.
	Elapsed time.Duration
	// Latency holds the latencies of the operations that succeeded.
	Latency *Histogram
	// Err is the first operation error, if any.
	Err error
}

// Throughput is successful operations per second.
func (r Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Done-r.Failed) / r.Elapsed.Seconds()
}

// String summarises the result.
func (r Result) String() string {
	return fmt.Sprintf("%d ok, %d failed, %d skipped in %s: %.0f/s, p50 %s, p99 %s, max %s",
		r.Done-r.Failed, r.Failed, r.Skipped, r.Elapsed.Round(time.Millisecond), r.Throughput(),
		r.Latency.Quantile(0.50), r.Latency.Quantile(0.99), r.Latency.Max())
}

// Run runs op as cfg says and returns what it measured. It returns an
// error only for an invalid Config; failed operations are counted.
func Run(ctx context.Context, cfg Config, op Op) (Result, error) {
	if cfg.Count <= 0 || cfg.Duration <= 0 {
		return Result{}, errors.New("loadgen: Count and Duration must both be positive")
	}
	if cfg.Rate < 0 {
		return Result{}, errors.New("loadgen: Rate must not be negative")
	}
	cfg.Concurrency = max(cfg.Concurrency, 1)
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	// due carries each operation's index and the time it was due.
	type job struct {
		i   int
		due time.Time
	}
	jobs := make(chan job, cfg.Concurrency)
	start := time.Now()
	var issued atomic.Int64
	go func() {
		defer close(jobs)
		for i := range cfg.Count {
			due := time.Now()
			if cfg.Rate > 0 {
				due = start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						return
					}
				}
			}
			select {
			case jobs <- job{i: i, due: due}:
				issued.Add(1)
			case <-ctx.Done():
				return
			}
		}
	}()

	// Workers record into a few shared tallies rather than one each, so
	// that a thousand workers do not bring a thousand histograms.
	type tally struct {
		mu           sync.Mutex
		h            Histogram
		done, failed int
		err          error
		last         time.Time
	}
	tallies := make([]tally, min(cfg.Concurrency, tallyShards))
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		t := &tallies[w%len(tallies)]
		wg.Go(func() {
			for j := range jobs {
				if cfg.Rate == 0 {
					j.due = time.Now()
				}
				err := op(ctx, j.i)
				now := time.Now()
				t.mu.Lock()
				t.done++
				if now.After(t.last) {
					t.last = now
				}
				if err != nil {
					t.failed++
					if t.err == nil {
						t.err = fmt.Errorf("operation %d: %w", j.i, err)
					}
				} else {
					t.h.Record(now.Sub(j.due))
				}
				t.mu.Unlock()
			}
		})
	}
	wg.Wait()

	res := Result{Latency: &Histogram{}}
	end := start
	for i := range tallies {
		t := &tallies[i]
		res.Latency.Merge(&t.h)
		res.Done += t.done
		res.Failed += t.failed
		if res.Err == nil {
			res.Err = t.err
		}
		if t.last.After(end) {
			end = t.last
		}
	}
	res.Skipped = cfg.Count - int(issued.Load())
	res.Elapsed = end.Sub(start)
	return res, nil
}
