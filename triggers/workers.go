package triggers

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// workerIdle is how long a delivery goroutine waits for its next event
// before it exits.
const workerIdle = 5 * time.Second

// workers run deliveries on at most n goroutines at once. A goroutine
// stays for the next event while events keep coming, so a busy Trigger
// does not start (and grow the stack of) a goroutine per event, and exits
// after workerIdle without one, so an idle Trigger holds none.
type workers struct {
	work  chan jetstream.Msg // unbuffered: a send is taken by an idle worker
	slots chan struct{}      // one per running worker
	idle  time.Duration
	do    func(jetstream.Msg)
	wg    sync.WaitGroup
}

func newWorkers(n int, idle time.Duration, do func(jetstream.Msg)) *workers {
	return &workers{work: make(chan jetstream.Msg), slots: make(chan struct{}, n), idle: idle, do: do}
}

// submit hands msg to an idle worker, or to a new one while fewer than n
// run, else waits until a worker is free.
func (w *workers) submit(msg jetstream.Msg) {
	select {
	case w.work <- msg:
		return
	default:
	}
	select {
	case w.work <- msg:
	case w.slots <- struct{}{}:
		w.wg.Add(1)
		go w.run(msg)
	}
}

func (w *workers) run(msg jetstream.Msg) {
	defer func() {
		<-w.slots
		w.wg.Done()
	}()
	w.do(msg)
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		select {
		case msg, ok := <-w.work:
			if !ok {
				return
			}
			w.do(msg)
			t.Reset(w.idle)
		case <-t.C:
			return
		}
	}
}

// wait lets the running deliveries finish and waits for them; submit must
// not be called again.
func (w *workers) wait() {
	close(w.work)
	w.wg.Wait()
}
