// Package board serves the live coffee-shop board: an order form, each
// order's progress followed on the Broker's stream (see Board.Follow), and
// the function instances panel, pushed to browsers over Server-Sent
// Events.
//
// Its parts: Orders projects the shop's events onto orders (orders.go,
// fed by follow.go); a hub pushes changes to the browsers (hub.go); the
// HTTP API serves the page and what it asks for (api.go, its routes listed
// once below); and a client places orders with take-order directly
// (takeorder.go).
package board

import (
	"context"
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
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

// routes are the board's routes, each pattern with its handler.
var routes = []struct {
	pattern string
	handle  func(*Board, http.ResponseWriter, *http.Request)
}{
	{"GET " + PagePath + "{$}", (*Board).page},
	{"GET " + AssetsPath, (*Board).assets},
	{"GET " + EventsPath, (*Board).events},
	{"POST " + OrdersPath, (*Board).placeOrder},
	{"POST " + KillPath, (*Board).kill},
	{"GET " + TracePath + "{id}", (*Board).trace},
	{"GET " + HistoryPath, (*Board).history},
	{"GET " + MenuPath, (*Board).menu},
}

// Routes lists the patterns to mount the Board under.
func Routes() []string {
	patterns := make([]string, len(routes))
	for i, rt := range routes {
		patterns[i] = rt.pattern
	}
	return patterns
}

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

// Board is the web board.
type Board struct {
	d         Deps
	mux       *http.ServeMux
	static    fs.FS
	files     http.Handler
	tracer    trace.Tracer
	orders    *Orders
	hub       *hub
	takeOrder *takeOrder
}

// New returns a Board.
func New(d Deps) (*Board, error) {
	if d.StatusEvery <= 0 {
		d.StatusEvery = 250 * time.Millisecond
	}
	tp := d.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	to, err := newTakeOrder(d.TakeOrder)
	if err != nil {
		return nil, err
	}
	static, _ := fs.Sub(assets, "assets")
	b := &Board{d: d, static: static, files: http.StripPrefix(AssetsPath, http.FileServerFS(static)), tracer: tp.Tracer(tracing.Scope), hub: newHub(), takeOrder: to}
	b.orders = NewOrders(MaxOrders, func(o Order) { b.hub.broadcast("order", o) })
	b.mux = http.NewServeMux()
	for _, rt := range routes {
		b.mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) { rt.handle(b, w, r) })
	}
	return b, nil
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
				b.hub.broadcast("status", b.d.Status())
			}
		}
	}
}

// Apply moves an order on with one of the shop's events, stored in the
// Broker at time at; other events are ignored.
func (b *Board) Apply(ev cloudevents.Event, at time.Time) { b.orders.Apply(ev, at) }

// Counts returns how many of the orders the board keeps (the MaxOrders
// most recently updated) are at each stage, every stage present.
func (b *Board) Counts() map[string]int { return b.orders.Counts() }
