package board

import (
	"container/list"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
)

// MaxOrders bounds the orders the board keeps: the most recently updated
// ones. Without it a busy shop grows the board's memory without end; an
// evicted order is only missing from the page of a browser that connects
// later, and from Counts.
const MaxOrders = 1000

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

// stageOf is the stage each of the shop's event types moves an order to.
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

// Orders projects the shop's events onto its orders: one Order each,
// moved on by the order's events, keeping the most recently updated ones
// up to a bound. It is safe for concurrent use.
type Orders struct {
	max     int
	changed func(Order)

	mu     sync.Mutex
	byID   map[string]*list.Element // of *Order
	recent *list.List               // every order, least recently updated first
}

// NewOrders returns an empty projection that keeps the max most recently
// updated orders. changed, when not nil, gets each order that moved on,
// in the order they moved, while no other order can: it must not call
// back into the Orders.
func NewOrders(max int, changed func(Order)) *Orders {
	return &Orders{max: max, changed: changed, byID: map[string]*list.Element{}, recent: list.New()}
}

// Apply moves an order on with one of the shop's events, stored in the
// Broker at time at; other events are ignored.
func (p *Orders) Apply(ev cloudevents.Event, at time.Time) {
	stage, ok := stageOf[ev.Type()]
	if !ok {
		return
	}
	var d struct {
		OrderID, Customer, Beverage, Barista, Reason string
	}
	if err := coffee.Decode(ev, &d); err != nil {
		return // not an order of ours: nothing to show
	}
	if ev.Type() == coffee.TypeOrderPlaced {
		d.OrderID = coffee.OrderID(ev)
	}
	if d.OrderID == "" {
		return
	}
	p.advance(Order{OrderID: d.OrderID, Customer: d.Customer, Beverage: d.Beverage, Stage: stage, Barista: d.Barista, Reason: d.Reason, Updated: at, TraceID: tracing.TraceID(&ev)})
}

func (p *Orders) advance(in Order) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var o *Order
	if el, ok := p.byID[in.OrderID]; ok {
		o = el.Value.(*Order)
		rank := stageRank[o.Stage]
		if stageRank[in.Stage] < rank || (rank == terminal && in.Stage != o.Stage) {
			return
		}
		p.recent.MoveToBack(el)
	} else {
		o = &Order{OrderID: in.OrderID}
		p.byID[in.OrderID] = p.recent.PushBack(o)
		p.evictLocked()
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
	if p.changed != nil {
		// Under the lock, so that a View and the changes after it
		// follow on exactly.
		p.changed(*o)
	}
}

// evictLocked drops the least recently updated orders beyond the bound;
// p.mu must be held. Every update moves an order to the back of
// p.recent, so the front is the oldest by Updated.
func (p *Orders) evictLocked() {
	for p.recent.Len() > p.max {
		o := p.recent.Remove(p.recent.Front()).(*Order)
		delete(p.byID, o.OrderID)
	}
}

// Counts returns how many of the orders kept are at each stage, every
// stage present.
func (p *Orders) Counts() map[string]int {
	counts := make(map[string]int, len(stageRank))
	for stage := range stageRank {
		counts[stage] = 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for el := p.recent.Front(); el != nil; el = el.Next() {
		counts[el.Value.(*Order).Stage]++
	}
	return counts
}

// View calls fn with every order kept, oldest first, while no order can
// move on: a listener to the changes that fn starts (a browser's stream)
// begins exactly where the view ends, missing no change and seeing none
// twice.
func (p *Orders) View(fn func([]Order)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	orders := make([]Order, 0, p.recent.Len())
	for el := p.recent.Front(); el != nil; el = el.Next() {
		orders = append(orders, *el.Value.(*Order))
	}
	fn(orders)
}
