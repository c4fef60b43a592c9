package board_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/board"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// publisher records what the board stores in the Broker.
type publisher struct {
	mu     sync.Mutex
	events []cloudevents.Event
}

func (p *publisher) Publish(_ context.Context, _ broker.Ref, e *cloudevents.Event) (broker.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, *e)
	return broker.Result{}, nil
}

func (p *publisher) stored() []cloudevents.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]cloudevents.Event(nil), p.events...)
}

// placeOrder posts the form's order and decodes the board's answer.
func placeOrder(t *testing.T, b *board.Board, via string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodPost, board.OrdersPath,
		strings.NewReader(`{"customer":"ada","beverage":"latte","via":"`+via+`"}`)))
	var res map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatalf("answer %q: %v", rec.Body, err)
	}
	return rec.Code, res
}

// TestDirectOrderIsOneTraceWithTakeOrder: an order placed directly goes to
// take-order as a binary CloudEvent within the board's span, on the
// traceparent header and the event's tracing extension alike, and
// take-order's reply is stored in the Broker.
func TestDirectOrderIsOneTraceWithTakeOrder(t *testing.T) {
	var got http.Header
	takeOrder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		placed, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		reply := cloudevents.NewEvent()
		reply.SetID("accepted-1")
		reply.SetSource("/take-order")
		reply.SetType(coffee.TypeOrderAccepted)
		_ = reply.SetData(cloudevents.ApplicationJSON, coffee.Accepted{OrderID: coffee.OrderID(*placed), Customer: "ada", Beverage: "latte"})
		_ = cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(&reply), http.StatusOK, w)
	}))
	t.Cleanup(takeOrder.Close)
	endpoint, err := triggers.ParseURL(takeOrder.URL)
	if err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewSpanRecorder()
	pub := &publisher{}
	b, err := board.New(board.Deps{Publisher: pub, TakeOrder: endpoint, Log: slog.New(slog.DiscardHandler),
		Tracer: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	if err != nil {
		t.Fatal(err)
	}

	status, res := placeOrder(t, b, "direct")
	if status != http.StatusOK || res["reply"] != coffee.TypeOrderAccepted || res["error"] != nil {
		t.Fatalf("direct order answered %d %v, want 200 with take-order's reply", status, res)
	}
	if got.Get("Ce-Type") != coffee.TypeOrderPlaced || got.Get("Ce-Source") != "/koffeeshop/board" {
		t.Errorf("take-order got headers %v, want a binary order.placed", got)
	}
	ended := spans.Ended()
	if len(ended) != 1 || ended[0].Name() != "board order via direct" {
		t.Fatalf("spans %v, want the board's order via direct", ended)
	}
	want := "00-" + ended[0].SpanContext().TraceID().String() + "-" + ended[0].SpanContext().SpanID().String() + "-01"
	if tp := got.Get("Traceparent"); tp != want {
		t.Errorf("traceparent %q, want the board's span %q", tp, want)
	}
	if tp := got.Get("Ce-Traceparent"); tp != want {
		t.Errorf("the order's traceparent extension %q, want the board's span %q", tp, want)
	}
	if stored := pub.stored(); len(stored) != 1 || stored[0].ID() != "accepted-1" {
		t.Errorf("stored %v, want take-order's reply", stored)
	}
}

// TestDirectOrderRefused: take-order's refusal, and its reason, reach the
// form; nothing is stored.
func TestDirectOrderRefused(t *testing.T) {
	takeOrder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, "invalid order: no such beverage", http.StatusBadRequest)
	}))
	t.Cleanup(takeOrder.Close)
	endpoint, err := triggers.ParseURL(takeOrder.URL)
	if err != nil {
		t.Fatal(err)
	}
	pub := &publisher{}
	b, err := board.New(board.Deps{Publisher: pub, TakeOrder: endpoint, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	status, res := placeOrder(t, b, "direct")
	if status != http.StatusServiceUnavailable || res["error"] != "take-order answered 400: invalid order: no such beverage" {
		t.Errorf("refused order answered %d %v, want 503 with take-order's reason", status, res)
	}
	if stored := pub.stored(); len(stored) != 0 {
		t.Errorf("stored %v, want nothing", stored)
	}

	takeOrder.Close()
	if status, res := placeOrder(t, b, "direct"); status != http.StatusServiceUnavailable || !strings.HasPrefix(res["error"].(string), "take-order: ") {
		t.Errorf("order to a take-order gone answered %d %v, want 503", status, res)
	}

	without := newBoard(t)
	if status, res := placeOrder(t, without, "direct"); status != http.StatusServiceUnavailable || res["error"] != "no take-order Service in config" {
		t.Errorf("order without take-order answered %d %v, want 503", status, res)
	}
}

// TestEventStreamFollowsOnFromTheSnapshot: a browser gets every order
// kept, then each change, once.
func TestEventStreamFollowsOnFromTheSnapshot(t *testing.T) {
	b := newBoard(t)
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	accepted := func(id string) cloudevents.Event {
		return event(t, "a-"+id, coffee.TypeOrderAccepted, cloudevents.ApplicationJSON, coffee.Accepted{OrderID: id, Customer: "c", Beverage: "tea"})
	}
	feed(t, b, accepted("o-1"))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+board.EventsPath, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	// The snapshot has come once the headers have.
	feed(t, b, accepted("o-2"))
	feed(t, b, event(t, "r-1", coffee.TypeBeverageReady, cloudevents.ApplicationJSON, coffee.Ready{OrderID: "o-1", Customer: "c", Beverage: "tea"}))

	var seen []string
	buf := make([]byte, 4096)
	var data string
	for len(seen) < 3 {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("after %v: %v", seen, err)
		}
		data += string(buf[:n])
		for {
			msg, rest, ok := strings.Cut(data, "\n\n")
			if !ok {
				break
			}
			data = rest
			line, ok := strings.CutPrefix(msg, "event: order\ndata: ")
			if !ok {
				t.Fatalf("message %q", msg)
			}
			var o board.Order
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				t.Fatal(err)
			}
			seen = append(seen, o.OrderID+" "+o.Stage)
		}
	}
	if want := "o-1 accepted,o-2 accepted,o-1 ready"; strings.Join(seen, ",") != want {
		t.Errorf("stream %v, want %s", seen, want)
	}
}
