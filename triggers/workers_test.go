package triggers

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestWorkersBoundConcurrencyAndExitWhenIdle(t *testing.T) {
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
	time.Sleep(50 * time.Millisecond)
	if got := running.Load(); got != n {
		t.Fatalf("%d deliveries running, want the limit %d", got, n)
	}
	close(release)
	<-submitted
	deadline := time.Now().Add(5 * time.Second)
	for done.Load() < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 20 delivered", done.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if peak.Load() > n {
		t.Fatalf("peak %d deliveries at once, limit %d", peak.Load(), n)
	}
	// Idle workers leave: every slot is free again.
	deadline = time.Now().Add(5 * time.Second)
	for len(w.slots) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still running after the idle time", len(w.slots))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// And new events start new workers.
	w.submit(nil)
	w.wait()
	if done.Load() != 21 {
		t.Fatalf("%d delivered, want 21", done.Load())
	}
}

func TestWorkersStayForTheNextEvent(t *testing.T) {
	var done atomic.Int64
	w := newWorkers(8, time.Minute, func(jetstream.Msg) { done.Add(1) })
	for range 100 {
		w.submit(nil)
		time.Sleep(100 * time.Microsecond)
	}
	// Within the idle time the workers stay, ready for the next event.
	if len(w.slots) == 0 {
		t.Fatal("no worker waits for the next event")
	}
	w.wait()
	if done.Load() != 100 || len(w.slots) != 0 {
		t.Fatalf("%d delivered, %d workers left", done.Load(), len(w.slots))
	}
}
