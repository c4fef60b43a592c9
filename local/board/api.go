package board

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
)

// The handlers of the board's routes (see routes).

func (b *Board) page(w http.ResponseWriter, r *http.Request) {
	http.ServeFileFS(w, r, b.static, "index.html")
}

func (b *Board) assets(w http.ResponseWriter, r *http.Request) { b.files.ServeHTTP(w, r) }

// menu answers what the form offers.
func (b *Board) menu(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]any{"menu": coffee.Menu(), "maxCustomerLength": coffee.MaxCustomerLen})
}

// events streams the board: every known order first, then changes.
func (b *Board) events(w http.ResponseWriter, r *http.Request) {
	if _, ok := w.(http.Flusher); !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	var (
		first       [][]byte
		msgs        <-chan []byte
		unsubscribe func()
	)
	b.orders.View(func(orders []Order) {
		msgs, unsubscribe = b.hub.subscribe()
		for _, o := range orders { // oldest first
			first = append(first, sse("order", o))
		}
	})
	defer unsubscribe()
	if b.d.Status != nil {
		first = append(first, sse("status", b.d.Status()))
	}
	stream(w, r, first, msgs)
}

// trace answers an order's timeline: the spans of its trace.
func (b *Board) trace(w http.ResponseWriter, r *http.Request) {
	var spans any
	if b.d.Trace != nil {
		spans = b.d.Trace(r.PathValue("id"))
	}
	if spans == nil {
		http.Error(w, "no such trace (the runner keeps the recent ones, with tracing on)", http.StatusNotFound)
		return
	}
	writeJSON(w, spans)
}

// history answers the functions' scale over the last minutes.
func (b *Board) history(w http.ResponseWriter, _ *http.Request) {
	var h any = []any{}
	if b.d.History != nil {
		h = b.d.History()
	}
	writeJSON(w, h)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

type orderForm struct {
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
	// Via is "broker" (messaging: 202 at once) or "direct" (take-order
	// over HTTP, answered synchronously).
	Via string `json:"via"`
}

type orderResult struct {
	Via      string          `json:"via"`
	Status   int             `json:"status"`
	Millis   float64         `json:"millis"`
	OrderID  string          `json:"orderId"`
	Reply    string          `json:"reply,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Error    string          `json:"error,omitempty"`
	Customer string          `json:"customer"`
}

// placeOrder places the form's order through the Broker or directly with
// take-order, and answers how it went.
func (b *Board) placeOrder(w http.ResponseWriter, r *http.Request) {
	var f orderForm
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&f); err != nil {
		http.Error(w, "want JSON {customer, beverage, via}: "+err.Error(), http.StatusBadRequest)
		return
	}
	ev := cloudevents.NewEvent()
	ev.SetID(uuid.NewString())
	ev.SetSource("/koffeeshop/board")
	ev.SetType(coffee.TypeOrderPlaced)
	_ = ev.SetData(cloudevents.ApplicationJSON, coffee.Order{Customer: f.Customer, Beverage: f.Beverage})
	res := orderResult{Via: f.Via, OrderID: coffee.OrderID(ev), Customer: f.Customer}
	if res.Via == "" {
		res.Via = "broker"
	}
	if res.Via != "broker" && res.Via != "direct" {
		http.Error(w, fmt.Sprintf("via %q: want broker or direct", f.Via), http.StatusBadRequest)
		return
	}
	// The order's trace starts here (or continues the browser's), and the
	// order carries it on to the Broker or to take-order.
	ctx, span := tracing.Start(b.tracer, tracing.FromHTTP(r.Context(), r.Header), "board order via "+res.Via,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("cloudevents.event_id", ev.ID()), attribute.String("cloudevents.event_type", ev.Type())))
	defer span.End()
	tracing.OnEvent(ctx, &ev)
	start := time.Now()
	var err error
	if res.Via == "broker" {
		_, err = b.d.Publisher.Publish(ctx, b.d.Broker, &ev)
		res.Status = http.StatusAccepted
	} else {
		// take-order answers at once; its reply goes to the Broker, so
		// the rest of the shop carries on from there.
		var reply *cloudevents.Event
		reply, res.Status, err = b.takeOrder.Request(ctx, ev)
		if err == nil {
			res.Reply, res.Data = reply.Type(), reply.Data()
			if _, err = b.d.Publisher.Publish(ctx, b.d.Broker, reply); err != nil {
				err = fmt.Errorf("store take-order's reply: %w", err)
			}
		}
	}
	res.Millis = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		res.Status = http.StatusServiceUnavailable
		res.Error = err.Error()
		span.SetStatus(codes.Error, err.Error())
		b.d.Log.Warn("board order failed", "via", res.Via, "err", err)
	}
	span.SetAttributes(attribute.Int("http.response.status_code", res.Status))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(res.Status)
	_ = json.NewEncoder(w).Encode(res)
}

// kill SIGKILLs one instance of the Service ?service= names.
func (b *Board) kill(w http.ResponseWriter, r *http.Request) {
	service := r.URL.Query().Get("service")
	if service == "" || b.d.Kill == nil {
		http.Error(w, "want ?service=<name>", http.StatusBadRequest)
		return
	}
	name, err := b.d.Kill(service)
	if err != nil {
		status := http.StatusConflict
		if errors.Is(err, errNotFound) {
			status = http.StatusNotFound
		}
		http.Error(w, err.Error(), status)
		return
	}
	writeJSON(w, map[string]string{"killed": name})
}

var errNotFound = errors.New("not found")

// ErrNotFound marks a Kill of an unknown Service.
func ErrNotFound(service string) error { return fmt.Errorf("service %q: %w", service, errNotFound) }
