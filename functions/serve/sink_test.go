package serve_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// recordingSink is a CloudEvents receiver that answers every event with
// status and body, and counts the connections it was sent on.
type recordingSink struct {
	srv     *httptest.Server
	conns   atomic.Int64
	mu      sync.Mutex
	events  []cloudevents.Event
	headers []http.Header
}

func newRecordingSink(t *testing.T, status int, body string) *recordingSink {
	t.Helper()
	s := &recordingSink{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.Header.Get("Ce-Id") == "" {
			http.Error(w, "want binary mode", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.events = append(s.events, *ev)
		s.headers = append(s.headers, r.Header.Clone())
		s.mu.Unlock()
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *recordingSink) received() []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cloudevents.Event(nil), s.events...)
}

func (s *recordingSink) receivedHeaders() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.headers...)
}

func sinkEvent(t *testing.T, id string) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/test/fn")
	e.SetType("test.progress")
	e.SetSubject("order-1")
	if err := e.SetData(cloudevents.ApplicationJSON, map[string]string{"orderId": "order-1"}); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSinkSendsEventsOnKeptConnections: events arrive intact, in binary
// mode, and one connection carries them all, even when the sink answers
// with a body the sender does not need.
func TestSinkSendsEventsOnKeptConnections(t *testing.T) {
	rec := newRecordingSink(t, http.StatusOK, "stored, thanks")
	sink, err := serve.NewSink(rec.srv.URL+"/default/default", 0)
	if err != nil {
		t.Fatal(err)
	}
	if sink.Target() != rec.srv.URL+"/default/default" {
		t.Errorf("target = %q", sink.Target())
	}
	const n = 10
	for i := range n {
		if err := sink.Send(t.Context(), sinkEvent(t, "evt-"+string(rune('a'+i)))); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	got := rec.received()
	if len(got) != n {
		t.Fatalf("sink received %d events, want %d", len(got), n)
	}
	e := got[0]
	if e.ID() != "evt-a" || e.Source() != "/test/fn" || e.Type() != "test.progress" || e.Subject() != "order-1" {
		t.Errorf("received %s", e)
	}
	if string(e.Data()) != `{"orderId":"order-1"}` {
		t.Errorf("data = %s", e.Data())
	}
	if !e.Time().IsZero() {
		t.Errorf("the sink stamped a time on the event: %s", e.Time())
	}
	if c := rec.conns.Load(); c != 1 {
		t.Errorf("%d events took %d connections, want 1 kept alive", n, c)
	}
}

// TestSinkSendsTheTraceContext: a send within a span carries the span as
// the traceparent header, so the Broker continues the sender's trace; a
// send without one carries none, and sends do not share headers.
func TestSinkSendsTheTraceContext(t *testing.T) {
	rec := newRecordingSink(t, http.StatusAccepted, "")
	sink, err := serve.NewSink(rec.srv.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h := http.Header{"Traceparent": {parent}}
	ctx := tracing.FromHTTP(t.Context(), h)
	if err := sink.Send(ctx, sinkEvent(t, "evt-traced")); err != nil {
		t.Fatal(err)
	}
	if err := sink.Send(ctx, sinkEvent(t, "evt-traced-too")); err != nil {
		t.Fatal(err)
	}
	if err := sink.Send(t.Context(), sinkEvent(t, "evt-untraced")); err != nil {
		t.Fatal(err)
	}
	got := rec.receivedHeaders()
	if len(got) != 3 {
		t.Fatalf("%d requests, want 3", len(got))
	}
	for i, want := range []string{parent, parent, ""} {
		if tp := got[i].Get("Traceparent"); tp != want {
			t.Errorf("send %d: traceparent %q, want %q", i, tp, want)
		}
	}
	if ids := got[1].Values("Ce-Id"); len(ids) != 1 || ids[0] != "evt-traced-too" {
		t.Errorf("second send's Ce-Id %q, want its own alone", ids)
	}
}

// TestSinkPercentEncodesAttributes: attribute values go out as binding
// §3.1.3.2 says, percent-encoded, and arrive intact.
func TestSinkPercentEncodesAttributes(t *testing.T) {
	rec := newRecordingSink(t, http.StatusAccepted, "")
	sink, err := serve.NewSink(rec.srv.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	e := sinkEvent(t, "evt-encoded")
	e.SetSubject("café 100%")
	if err := sink.Send(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	if got := rec.receivedHeaders()[0].Get("Ce-Subject"); got != "caf%C3%A9%20100%25" {
		t.Errorf("Ce-Subject %q, want it percent-encoded", got)
	}
}

func TestSinkReportsRefusals(t *testing.T) {
	rec := newRecordingSink(t, http.StatusServiceUnavailable, "event not stored, retry")
	sink, err := serve.NewSink(rec.srv.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = sink.Send(t.Context(), sinkEvent(t, "evt-1"))
	var se *serve.SendError
	if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable {
		t.Fatalf("err = %v, want a SendError with status 503", err)
	}
	if !strings.Contains(err.Error(), "evt-1") || !strings.Contains(err.Error(), "event not stored") {
		t.Errorf("error %q does not name the event and the sink's answer", err)
	}
}

func TestSinkReportsTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		sink, err := serve.NewSink("http://"+addr+"/", 0)
		if err != nil {
			t.Fatal(err)
		}
		err = sink.Send(t.Context(), sinkEvent(t, "evt-1"))
		var se *serve.SendError
		if !errors.As(err, &se) || se.Status != 0 {
			t.Fatalf("err = %v, want a SendError without status", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(release) })
		sink, err := serve.NewSink(srv.URL, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		err = sink.Send(context.Background(), sinkEvent(t, "evt-1"))
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want a deadline error", err)
		}
		if d := time.Since(begin); d > 5*time.Second {
			t.Errorf("a 100ms send timeout took %s", d)
		}
	})
}

func TestSinkFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	s, err := serve.SinkFromEnv(env(nil), 0)
	if s != nil || err != nil {
		t.Fatalf("unset K_SINK: %v, %v; want no sink and no error", s, err)
	}
	s, err = serve.SinkFromEnv(env(map[string]string{serve.EnvSink: "http://127.0.0.1:8080/default/default"}), 0)
	if err != nil || s == nil || s.Target() != "http://127.0.0.1:8080/default/default" {
		t.Fatalf("K_SINK set: %v, %v", s, err)
	}
	for _, bad := range []string{"127.0.0.1:8080", "ftp://example.com/", "http://", "::"} {
		if _, err := serve.SinkFromEnv(env(map[string]string{serve.EnvSink: bad}), 0); err == nil || !strings.Contains(err.Error(), serve.EnvSink) {
			t.Errorf("K_SINK=%q: err = %v, want an error naming K_SINK", bad, err)
		}
	}
}
