// Package board serves the live coffee-shop board: an order form, each
// order's progress followed on the Broker's stream (see Board.Follow), and
// the function instances panel, pushed to browsers over Server-Sent
// Events.
package board

import (
	"bytes"
	"container/list"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/triggers"
)

//go:embed assets
var assets embed.FS

// Paths the board serves; "_" cannot start a Kubernetes namespace, so they
// never shadow a Broker's /<namespace>/<broker>.
const (
	PagePath   = "/"
	EventsPath = "/_board/events"
	OrdersPath = "/_board/orders"
	KillPath   = "/_board/kill"
	// TracePath + a trace id is the order's timeline.
	TracePath   = "/_board/traces/"
	HistoryPath = "/_board/history"
	MenuPath    = "/_board/menu"
	AssetsPath  = "/_board/assets/"
)

// Deps are what the board works with.
type Deps struct {
	// Publisher and Broker take orders placed through the broker.
	Publisher broker.Publisher
	Broker    broker.Ref
	// TakeOrder reaches the take-order function directly.
	TakeOrder triggers.Endpoint
	// Tracer starts the trace of an order placed with the form, so that
	// the order's timeline begins where it was placed; nil traces nothing.
	Tracer trace.TracerProvider
	// Status is the runner's function panel, refreshed every StatusEvery.
	Status      func() any
	StatusEvery time.Duration
	// History is the functions' scale over the last minutes, for the
	// chart; Trace the spans of a trace (nil when unknown), for an
	// order's timeline.
	History func() any
	Trace   func(id string) any
	// Kill SIGKILLs one instance of a Service and names it.
	Kill func(service string) (string, error)
	Log  *slog.Logger
}

// MaxOrders bounds the orders the board keeps: the most recently updated
// ones. Without it a busy shop grows the board's memory without end; an
// evicted order is only missing from the page of a browser that connects
// later, and from Counts.
const MaxOrders = 1000

// Board is the web board.
type Board struct {
	d      Deps
	mux    *http.ServeMux
	client *http.Client
	tracer trace.Tracer

	mu     sync.Mutex
	orders map[string]*list.Element // of *Order, by order id
	recent *list.List               // every order, least recently updated first
	subs   map[chan []byte]struct{}
}

// Order is one order as the board shows it.
type Order struct {
	OrderID  string    `json:"orderId"`
	Customer string    `json:"customer"`
	Beverage string    `json:"beverage"`
	Stage    string    `json:"stage"`
	Barista  string    `json:"barista,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Updated  time.Time `json:"updated"`
	// TraceID is the order's trace: every event of the order is in it.
	TraceID string `json:"traceId,omitempty"`
}

// The stages an order moves through; it never moves back, and once at a
// terminal stage (notified, rejected or failed) it stays there.
var stageRank = map[string]int{"placed": 1, "accepted": 2, "preparing": 3, "ready": 4, "notified": terminal, "rejected": terminal, "failed": terminal}

const terminal = 5

var stageOf = map[string]string{
	coffee.TypeOrderPlaced:       "placed",
	coffee.TypeOrderAccepted:     "accepted",
	coffee.TypeOrderRejected:     "rejected",
	coffee.TypeBeveragePreparing: "preparing",
	coffee.TypeBeverageReady:     "ready",
	coffee.TypeCustomerNotified:  "notified",
	// One of the order's events was dead-lettered: it went no further.
	coffee.TypeOrderFailed: "failed",
}

// New returns a Board.
func New(d Deps) *Board {
	if d.StatusEvery <= 0 {
		d.StatusEvery = 250 * time.Millisecond
	}
	tp := d.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	b := &Board{d: d, tracer: tp.Tracer(tracing.Scope), client: &http.Client{Timeout: 30 * time.Second}, orders: map[string]*list.Element{}, recent: list.New(), subs: map[chan []byte]struct{}{}}
	static, _ := fs.Sub(assets, "assets")
	b.mux = http.NewServeMux()
	b.mux.HandleFunc("GET "+PagePath+"{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "index.html")
	})
	b.mux.Handle("GET "+AssetsPath, http.StripPrefix(AssetsPath, http.FileServerFS(static)))
	b.mux.HandleFunc("GET "+EventsPath, b.events)
	b.mux.HandleFunc("POST "+OrdersPath, b.placeOrder)
	b.mux.HandleFunc("POST "+KillPath, b.kill)
	b.mux.HandleFunc("GET "+TracePath+"{id}", b.trace)
	b.mux.HandleFunc("GET "+HistoryPath, b.history)
	b.mux.HandleFunc("GET "+MenuPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"menu": coffee.Menu(), "maxCustomerLength": coffee.MaxCustomerLen})
	})
	return b
}

// Routes lists the patterns to mount the Board under.
func Routes() []string {
	return []string{"GET " + PagePath + "{$}", "GET " + AssetsPath, "GET " + EventsPath, "POST " + OrdersPath, "POST " + KillPath, "GET " + TracePath + "{id}", "GET " + HistoryPath, "GET " + MenuPath}
}

func (b *Board) ServeHTTP(w http.ResponseWriter, r *http.Request) { b.mux.ServeHTTP(w, r) }

// Run pushes the function panel to the browsers until ctx is done.
func (b *Board) Run(ctx context.Context) {
	t := time.NewTicker(b.d.StatusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if b.d.Status != nil {
				b.broadcast("status", b.d.Status())
			}
		}
	}
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

// Apply moves an order on with one of the shop's events, stored in the
// Broker at time at; other events are ignored.
func (b *Board) Apply(ev cloudevents.Event, at time.Time) {
	stage, ok := stageOf[ev.Type()]
	if !ok {
		return
	}
	var p struct {
		OrderID, Customer, Beverage, Barista, Reason string
	}
	if err := coffee.Decode(ev, &p); err != nil {
		return // not an order of ours: nothing to show
	}
	if ev.Type() == coffee.TypeOrderPlaced {
		p.OrderID = coffee.OrderID(ev)
	}
	if p.OrderID == "" {
		return
	}
	b.advance(Order{OrderID: p.OrderID, Customer: p.Customer, Beverage: p.Beverage, Stage: stage, Barista: p.Barista, Reason: p.Reason, Updated: at, TraceID: tracing.TraceID(&ev)})
}

func (b *Board) advance(in Order) {
	b.mu.Lock()
	var o *Order
	if el, ok := b.orders[in.OrderID]; ok {
		o = el.Value.(*Order)
		rank := stageRank[o.Stage]
		if stageRank[in.Stage] < rank || (rank == terminal && in.Stage != o.Stage) {
			b.mu.Unlock()
			return
		}
		b.recent.MoveToBack(el)
	} else {
		o = &Order{OrderID: in.OrderID}
		b.orders[in.OrderID] = b.recent.PushBack(o)
		b.evictLocked()
	}
	o.Stage = in.Stage
	if o.TraceID == "" {
		o.TraceID = in.TraceID
	}
	for dst, src := range map[*string]string{&o.Customer: in.Customer, &o.Beverage: in.Beverage, &o.Barista: in.Barista, &o.Reason: in.Reason} {
		if src != "" {
			*dst = src
		}
	}
	o.Updated = in.Updated
	snapshot := *o
	b.mu.Unlock()
	b.broadcast("order", snapshot)
}

// evictLocked drops the least recently updated orders beyond MaxOrders;
// b.mu must be held. Every update moves an order to the back of b.recent,
// so the front is the oldest by Updated.
func (b *Board) evictLocked() {
	for b.recent.Len() > MaxOrders {
		o := b.recent.Remove(b.recent.Front()).(*Order)
		delete(b.orders, o.OrderID)
	}
}

// Counts returns how many of the orders the board keeps (the MaxOrders
// most recently updated) are at each stage, every stage present.
func (b *Board) Counts() map[string]int {
	counts := make(map[string]int, len(stageRank))
	for stage := range stageRank {
		counts[stage] = 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for el := b.recent.Front(); el != nil; el = el.Next() {
		counts[el.Value.(*Order).Stage]++
	}
	return counts
}

// events streams the board: every known order first, then changes.
func (b *Board) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	ch := make(chan []byte, 256)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	orders := make([]Order, 0, b.recent.Len())
	for el := b.recent.Front(); el != nil; el = el.Next() {
		orders = append(orders, *el.Value.(*Order))
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.mu.Unlock()
	}()
	for _, o := range orders { // oldest first
		_, _ = w.Write(sse("order", o))
	}
	if b.d.Status != nil {
		_, _ = w.Write(sse("status", b.d.Status()))
	}
	flusher.Flush()
	// The write deadline of the server does not apply to this stream.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	for {
		select {
		case <-r.Context().Done():
			return
		case msg := <-ch:
			if _, err := w.Write(msg); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

func sse(event string, v any) []byte {
	data, _ := json.Marshal(v)
	return []byte("event: " + event + "\ndata: " + string(data) + "\n\n")
}

// broadcast sends to every browser; a browser too slow to keep up misses
// the message rather than holding the others back.
func (b *Board) broadcast(event string, v any) {
	msg := sse(event, v)
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- msg:
		default:
		}
	}
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
		err = b.direct(ctx, ev, &res)
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

// direct calls take-order synchronously and hands its reply to the broker,
// so the rest of the shop carries on from there.
func (b *Board) direct(ctx context.Context, ev cloudevents.Event, res *orderResult) error {
	if b.d.TakeOrder == nil {
		return errors.New("no take-order Service in config")
	}
	u, release, err := b.d.TakeOrder.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("take-order: %w", err)
	}
	defer release()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return err
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&ev), req); err != nil {
		return err
	}
	tracing.ToHTTP(ctx, req.Header)
	resp, err := b.client.Do(req)
	if err != nil {
		return fmt.Errorf("take-order: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	res.Status = resp.StatusCode
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("take-order answered %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	reply, err := binding.ToEvent(ctx, cehttp.NewMessage(resp.Header, io.NopCloser(bytes.NewReader(body))))
	if err != nil {
		return fmt.Errorf("take-order reply: %w", err)
	}
	res.Reply, res.Data = reply.Type(), reply.Data()
	if _, err := b.d.Publisher.Publish(ctx, b.d.Broker, reply); err != nil {
		return fmt.Errorf("store take-order's reply: %w", err)
	}
	return nil
}

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
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"killed": name})
}

var errNotFound = errors.New("not found")

// ErrNotFound marks a Kill of an unknown Service.
func ErrNotFound(service string) error { return fmt.Errorf("service %q: %w", service, errNotFound) }
