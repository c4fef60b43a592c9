package triggers

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The workers are goroutines, channels and timers only: they run in a
// synctest bubble, where "every worker is busy" and "the idle time has
// passed" are moments the test waits for, not durations it guesses.

func TestWorkersBoundConcurrencyAndExitWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 4
		var running, peak, done atomic.Int64
		release := make(chan struct{})
		w := newWorkers(n, 50*time.Millisecond, func(jetstream.Msg) {
			r := running.Add(1)
			for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
			}
			<-release
			running.Add(-1)
			done.Add(1)
		})
		submitted := make(chan struct{})
		go func() {
			for range 20 {
				w.submit(nil)
			}
			close(submitted)
		}()
		// Every worker is held and the submitter waits for one.
		synctest.Wait()
		if got := running.Load(); got != n {
			t.Fatalf("%d deliveries running, want the limit %d", got, n)
		}
		close(release)
		<-submitted
		synctest.Wait()
		if done.Load() < 20 {
			t.Fatalf("%d of 20 delivered", done.Load())
		}
		if peak.Load() > n {
			t.Fatalf("peak %d deliveries at once, limit %d", peak.Load(), n)
		}
		// Idle workers leave: every slot is free again once the idle time
		// (on the bubble's clock) has passed.
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if len(w.slots) > 0 {
			t.Fatalf("%d workers still running after the idle time", len(w.slots))
		}
		// And new events start new workers.
		w.submit(nil)
		w.wait()
		if done.Load() != 21 {
			t.Fatalf("%d delivered, want 21", done.Load())
		}
	})
}

func TestWorkersStayForTheNextEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var done atomic.Int64
		w := newWorkers(8, time.Minute, func(jetstream.Msg) { done.Add(1) })
		for range 100 {
			w.submit(nil)
			// The event is done and its worker waits for the next one.
			synctest.Wait()
		}
		// Within the idle time the workers stay, ready for the next event.
		if len(w.slots) == 0 {
			t.Fatal("no worker waits for the next event")
		}
		w.wait()
		if done.Load() != 100 || len(w.slots) != 0 {
			t.Fatalf("%d delivered, %d workers left", done.Load(), len(w.slots))
		}
	})
}
