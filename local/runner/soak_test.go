//go:build faults

package runner_test

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// usage is what the test process (which hosts the runner, its embedded
// NATS and the dispatchers) holds.
type usage struct {
	goroutines int
	heap       uint64 // live heap after a GC
	fds        int
}

func measure() usage {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fds, _ := os.ReadDir("/proc/self/fd")
	return usage{goroutines: runtime.NumGoroutine(), heap: m.HeapAlloc, fds: len(fds)}
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// waitAllZero waits until every function is back to zero instances.
func waitAllZero(t testing.TB, s *quietShop, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, "every function at zero after the load", func() error {
		total := 0
		for _, f := range s.Status().Functions {
			total += len(f.Instances)
		}
		if total != 0 {
			return fmt.Errorf("still %d function instances", total)
		}
		return nil
	})
}

// TestSoak: a sustained load at a fixed rate for a fixed time through an
// in-process runner; once it drained and the functions are back at zero,
// the goroutines, live heap and open files of the process are back near
// where they were before it.
func TestSoak(t *testing.T) {
	const (
		rate     = 200 // orders per second
		duration = 20 * time.Second
		orders   = rate * int(duration/time.Second)
		// What may remain without being a leak: runtime and timer
		// goroutines that come and go, caches of the embedded JetStream.
		goroutineSlack = 25
		heapSlack      = 24 << 20
		fdSlack        = 16
	)
	obs := startSink(t, true)
	cfg := faultConfig(t, "", obs.URL(), nil, retention("1s")...)
	s := startQuietShop(t, quietOptions{configDir: cfg, logLevel: slog.LevelWarn})
	url := s.IngressURL() + "/default/default"

	js := testkit.Connect(t, s.NATSURL())
	// idle waits for the shop to be at rest: nothing in flight, every
	// function at zero, no idle connection from the runner to the
	// observer, past the 10s after which JetStream's file store drops its
	// block caches and the 5s after which an idle delivery worker exits;
	// then it measures, until the goroutines, heap and open files are
	// under bound (or 30s more have passed).
	idle := func(bound *usage) usage {
		waitIdle(t, s.Status, js, 180*time.Second)
		waitAllZero(t, s, 60*time.Second)
		obs.srv.CloseClientConnections()
		time.Sleep(11 * time.Second)
		deadline := time.Now().Add(30 * time.Second)
		for {
			time.Sleep(time.Second)
			u := measure()
			if bound == nil || time.Now().After(deadline) ||
				u.goroutines <= bound.goroutines && u.heap <= bound.heap && u.fds <= bound.fds {
				return u
			}
		}
	}

	// The same paths once, so that what is created once (pools, consumers'
	// buffers, HTTP transports) is in the baseline.
	warm := startLoad(t, url, "soakwarm", 200, time.Second/rate, 30*time.Second)
	tallyQuiet(t, warm, obs)
	before := idle(nil)
	var peak usage
	stopSampling := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak.goroutines = max(peak.goroutines, runtime.NumGoroutine())
			peak.heap = max(peak.heap, m.HeapAlloc)
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Second):
			}
		}
	})
	start := time.Now()
	l := startLoad(t, url, "soak", orders, time.Second/rate, duration+5*time.Second)
	l.wait()
	loaded := time.Since(start)
	res := tally(t, "soak", fmt.Sprintf("nothing; %d orders/s for %s (the load took %s)", rate, duration, loaded.Round(100*time.Millisecond)), l, obs, 180*time.Second)
	close(stopSampling)
	wg.Wait()

	after := idle(&usage{goroutines: before.goroutines + goroutineSlack, heap: before.heap + heapSlack, fds: before.fds + fdSlack})
	t.Logf("RESULT soak usage: goroutines %d before, peak %d, %d after; live heap %s before, peak %s, %s after; open files %d before, %d after (sent %d, accepted %d in %s)",
		before.goroutines, peak.goroutines, after.goroutines, mib(before.heap), mib(peak.heap), mib(after.heap), before.fds, after.fds,
		res.sent, res.accepted, loaded.Round(100*time.Millisecond))
	if after.goroutines > before.goroutines+goroutineSlack {
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Errorf("goroutine leak: %d before the load, %d after it drained\n%s", before.goroutines, after.goroutines, b.String())
	}
	if after.heap > before.heap+heapSlack {
		t.Errorf("live heap grew from %s to %s over the soak", mib(before.heap), mib(after.heap))
	}
	if after.fds > before.fds+fdSlack {
		t.Errorf("open files grew from %d to %d over the soak", before.fds, after.fds)
	}
	if res.sent < orders*9/10 {
		t.Errorf("only %d of %d orders were sent in %s: the load was not sustained", res.sent, orders, duration)
	}
}
