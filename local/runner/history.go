package runner

import (
	"context"
	"sync"
	"time"
)

// The scale history the board charts: one sample a second for the last
// five minutes.
const (
	historyEvery = time.Second
	historyLen   = 300
)

// Sample is each function's scale at one moment.
type Sample struct {
	At        time.Time                 `json:"at"`
	Functions map[string]FunctionSample `json:"functions"`
}

// FunctionSample is one function's instances (ready), requests in flight
// at them and events waiting in JetStream for it.
type FunctionSample struct {
	Instances int `json:"instances"`
	InFlight  int `json:"inFlight"`
	Backlog   int `json:"backlog"`
}

// history is a ring of the last historyLen samples.
type history struct {
	mu      sync.Mutex
	samples []Sample
	next    int
}

func (h *history) add(s Sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.samples) < historyLen {
		h.samples = append(h.samples, s)
		return
	}
	h.samples[h.next] = s
	h.next = (h.next + 1) % historyLen
}

// all returns the samples, oldest first.
func (h *history) all() []Sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Sample, 0, len(h.samples))
	out = append(out, h.samples[h.next:]...)
	return append(out, h.samples[:h.next]...)
}

// sampleScale records every function's scale each historyEvery until ctx
// is done.
func (r *Runner) sampleScale(ctx context.Context) {
	t := time.NewTicker(historyEvery)
	defer t.Stop()
	for now := time.Now(); ; {
		s := Sample{At: now, Functions: map[string]FunctionSample{}}
		for _, f := range r.Status().Functions {
			s.Functions[f.Service] = FunctionSample{Instances: f.Ready, InFlight: f.InFlight, Backlog: f.Backlog}
		}
		r.history.add(s)
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
	}
}

// History is the functions' scale over the last minutes, oldest first.
func (r *Runner) History() []Sample { return r.history.all() }
