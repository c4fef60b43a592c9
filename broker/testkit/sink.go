package testkit

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Sink is a CloudEvents receiver on loopback HTTP, as a Trigger's
// subscriber or a K_SINK: it keeps the events it takes, in the order they
// arrive.
type Sink struct {
	// URL is where the sink listens.
	URL string
	srv *httptest.Server

	mu      sync.Mutex
	status  int
	events  []cloudevents.Event
	arrived chan struct{}
}

// NewSink starts a sink that answers 202 Accepted, and stops it when the
// test ends. A request that is no CloudEvent gets 400.
func NewSink(tb testing.TB) *Sink {
	s := &Sink{status: http.StatusAccepted, arrived: make(chan struct{}, 1)}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(srv.Close)
	s.URL, s.srv = srv.URL, srv
	return s
}

// Close stops the sink before the test ends: a sender then finds nothing
// listening.
func (s *Sink) Close() { s.srv.Close() }

func (s *Sink) serve(w http.ResponseWriter, r *http.Request) {
	ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	status := s.status
	// An event answered with other than 2xx was not taken: the sender
	// keeps it, and will send it again.
	if status/100 == 2 {
		s.events = append(s.events, *ev)
	}
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	w.WriteHeader(status)
}

// Answer makes the sink answer status from now on.
func (s *Sink) Answer(status int) {
	s.mu.Lock()
	s.status = status
	s.mu.Unlock()
}

// Events returns what the sink has taken so far.
func (s *Sink) Events() []cloudevents.Event {
	return s.Matching(func(cloudevents.Event) bool { return true })
}

// OfType returns the events of type typ the sink has taken so far.
func (s *Sink) OfType(typ string) []cloudevents.Event {
	return s.Matching(func(e cloudevents.Event) bool { return e.Type() == typ })
}

// Matching returns the events the sink has taken so far for which keep
// is true.
func (s *Sink) Matching(keep func(cloudevents.Event) bool) []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cloudevents.Event
	for _, e := range s.events {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// Wait waits until the sink has taken at least n events and returns them,
// or fails the test after timeout.
func (s *Sink) Wait(tb testing.TB, n int, timeout time.Duration) []cloudevents.Event {
	tb.Helper()
	return s.wait(tb, n, timeout, "events", s.Events)
}

// WaitType waits until the sink has taken at least n events of type typ
// and returns them, or fails the test after timeout.
func (s *Sink) WaitType(tb testing.TB, typ string, n int, timeout time.Duration) []cloudevents.Event {
	tb.Helper()
	return s.wait(tb, n, timeout, typ+" events", func() []cloudevents.Event { return s.OfType(typ) })
}

func (s *Sink) wait(tb testing.TB, n int, timeout time.Duration, what string, got func() []cloudevents.Event) []cloudevents.Event {
	tb.Helper()
	var events []cloudevents.Event
	err := poll(timeout, s.arrived, func() error {
		if events = got(); len(events) < n {
			return fmt.Errorf("%d of %d %s arrived", len(events), n, what)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("sink: %v", err)
	}
	return events
}
