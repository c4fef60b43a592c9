package loadgen_test

import (
	"context"
	"errors"
	"math"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

func TestHistogramQuantiles(t *testing.T) {
	var h loadgen.Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5000 * time.Microsecond}, {0.99, 9900 * time.Microsecond}, {1, 10000 * time.Microsecond}} {
		got := h.Quantile(c.q)
		if rel := math.Abs(float64(got-c.want)) / float64(c.want); rel > 1.0/64 {
			t.Errorf("q%.2f = %s, want %s within 1.6%%", c.q, got, c.want)
		}
	}
	if h.Count() != 10000 || h.Max() != 10*time.Millisecond {
		t.Errorf("count %d max %s", h.Count(), h.Max())
	}
	var small loadgen.Histogram
	small.Record(3)
	small.Record(0)
	if small.Quantile(1) != 3 || small.Quantile(0) != 0 {
		t.Errorf("exact small values: %s %s", small.Quantile(0), small.Quantile(1))
	}
	var merged loadgen.Histogram
	merged.Merge(&h)
	merged.Merge(&small)
	if merged.Count() != 10002 || merged.Quantile(0) != 0 {
		t.Errorf("merge: count %d min %s", merged.Count(), merged.Quantile(0))
	}
}

func TestClosedLoopStopsAtCount(t *testing.T) {
	var calls atomic.Int64
	res, err := loadgen.Run(context.Background(), loadgen.Config{Count: 500, Duration: 10 * time.Second, Concurrency: 8},
		func(ctx context.Context, i int) error {
			calls.Add(1)
			if i%100 == 0 {
				return errors.New("boom")
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 500 || res.Done != 500 || res.Failed != 5 || res.Skipped != 0 || res.Latency.Count() != 495 || res.Err == nil {
		t.Fatalf("calls %d, result %+v", calls.Load(), res)
	}
}

func TestRunStopsAtDuration(t *testing.T) {
	start := time.Now()
	res, err := loadgen.Run(context.Background(), loadgen.Config{Count: 1 << 30, Duration: 200 * time.Millisecond, Concurrency: 4},
		func(ctx context.Context, i int) error {
			select {
			case <-time.After(time.Millisecond):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("run took %s, bounded by 200ms", took)
	}
	if res.Skipped == 0 || res.Done == 0 {
		t.Fatalf("result %+v", res)
	}
}

func TestOpenLoopOffersTheRate(t *testing.T) {
	const rate, count = 500.0, 250
	start := time.Now()
	res, err := loadgen.Run(context.Background(), loadgen.Config{Count: count, Duration: 5 * time.Second, Concurrency: 16, Rate: rate},
		func(ctx context.Context, i int) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if want := time.Duration(float64(count-1) / rate * float64(time.Second)); took < want || took > want+time.Second {
		t.Fatalf("%d operations at %.0f/s took %s, want about %s", count, rate, took, want)
	}
	if res.Done != count {
		t.Fatalf("result %+v", res)
	}
}

func TestOpenLoopCountsQueueingDelay(t *testing.T) {
	// One worker, 10ms operations offered every 1ms: the later operations
	// wait for the worker, and that wait is part of their latency. The run
	// is in a synctest bubble, so the operations take 10ms exactly, on the
	// bubble's clock, however busy the machine is.
	synctest.Test(t, func(t *testing.T) {
		res, err := loadgen.Run(context.Background(), loadgen.Config{Count: 20, Duration: 5 * time.Second, Concurrency: 1, Rate: 1000},
			func(ctx context.Context, i int) error { time.Sleep(10 * time.Millisecond); return nil })
		if err != nil {
			t.Fatal(err)
		}
		if p := res.Latency.Max(); p < 150*time.Millisecond {
			t.Fatalf("max latency %s: the queueing delay was not counted", p)
		}
	})
}

func TestStats(t *testing.T) {
	if m := loadgen.Median([]int{5, 1, 3}); m != 3 {
		t.Errorf("median %d", m)
	}
	if lo, hi := loadgen.Spread([]float64{2, 9, 4}); lo != 2 || hi != 9 {
		t.Errorf("spread %v %v", lo, hi)
	}
	kb, err := loadgen.ResidentKiB(os.Getpid())
	if err != nil || kb <= 0 {
		t.Fatalf("rss %d, %v", kb, err)
	}
}
