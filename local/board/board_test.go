package board_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/board"
)

func newBoard(t *testing.T) *board.Board {
	t.Helper()
	b, err := board.New(board.Deps{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// feed applies e to the board as its Follow does.
func feed(t *testing.T, b *board.Board, e cloudevents.Event) {
	t.Helper()
	b.Apply(e, time.Now())
}

func event(t *testing.T, id, typ, contentType string, data any) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/test")
	e.SetType(typ)
	if data != nil {
		if err := e.SetData(contentType, data); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// snapshot reads what a browser gets first from the event stream: every
// order the board keeps, oldest first.
func snapshot(t *testing.T, b *board.Board) []board.Order {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // the stream ends right after the snapshot
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodGet, board.EventsPath, nil))
	var orders []board.Order
	for _, msg := range strings.Split(rec.Body.String(), "\n\n") {
		data, ok := strings.CutPrefix(msg, "event: order\ndata: ")
		if !ok {
			continue
		}
		var o board.Order
		if err := json.Unmarshal([]byte(data), &o); err != nil {
			t.Fatalf("order %q: %v", data, err)
		}
		orders = append(orders, o)
	}
	return orders
}

// TestFailedOrderShowsItsReason: an order take-order could not even read
// reaches the board only through order.failed, at the failed stage, with
// the reason; it is counted as failed.
func TestFailedOrderShowsItsReason(t *testing.T) {
	b := newBoard(t)
	placed := event(t, "p-1", coffee.TypeOrderPlaced, "text/plain", []byte("latte"))
	feed(t, b, placed)
	if got := snapshot(t, b); len(got) != 0 {
		t.Fatalf("an unreadable order is on the board: %+v", got)
	}
	const reason = "invalid order: unsupported datacontenttype \"text/plain\""
	feed(t, b, event(t, "f-1", coffee.TypeOrderFailed, cloudevents.ApplicationJSON, coffee.Failed{
		OrderID: coffee.OrderID(placed), Reason: reason, Code: 400, Destination: "http://127.0.0.1:1/",
	}))
	got := snapshot(t, b)
	if len(got) != 1 || got[0].OrderID != coffee.OrderID(placed) || got[0].Stage != "failed" || got[0].Reason != reason {
		t.Fatalf("board = %+v, want the order failed with its reason", got)
	}
	counts := b.Counts()
	if counts["failed"] != 1 || counts["notified"] != 0 || counts["rejected"] != 0 {
		t.Errorf("counts = %v, want one failed", counts)
	}
	for _, stage := range []string{"placed", "accepted", "preparing", "ready", "notified", "rejected", "failed"} {
		if _, ok := counts[stage]; !ok {
			t.Errorf("counts lack the stage %q: %v", stage, counts)
		}
	}
}

// TestTerminalStagesStay: an order does not move back, and an order that
// ended (notified, rejected, failed) does not change how it ended.
func TestTerminalStagesStay(t *testing.T) {
	b := newBoard(t)
	order := func(id string) coffee.Ready {
		return coffee.Ready{OrderID: id, Customer: "ada", Beverage: "latte", Barista: "b-1"}
	}
	failed := func(id string) coffee.Failed {
		return coffee.Failed{OrderID: id, Reason: "subscriber answered 500", Code: 500}
	}

	feed(t, b, event(t, "1", coffee.TypeBeverageReady, cloudevents.ApplicationJSON, order("o-1")))
	feed(t, b, event(t, "2", coffee.TypeOrderFailed, cloudevents.ApplicationJSON, failed("o-1")))
	feed(t, b, event(t, "3", coffee.TypeOrderAccepted, cloudevents.ApplicationJSON, order("o-1")))

	feed(t, b, event(t, "4", coffee.TypeCustomerNotified, cloudevents.ApplicationJSON, order("o-2")))
	feed(t, b, event(t, "5", coffee.TypeOrderFailed, cloudevents.ApplicationJSON, failed("o-2")))

	stages := map[string]board.Order{}
	for _, o := range snapshot(t, b) {
		stages[o.OrderID] = o
	}
	if o := stages["o-1"]; o.Stage != "failed" || o.Customer != "ada" || o.Barista != "b-1" || o.Reason != "subscriber answered 500" {
		t.Errorf("o-1 = %+v, want failed after ready, keeping what was known", o)
	}
	if o := stages["o-2"]; o.Stage != "notified" || o.Reason != "" {
		t.Errorf("o-2 = %+v, want still notified", o)
	}
	if c := b.Counts(); c["failed"] != 1 || c["notified"] != 1 {
		t.Errorf("counts = %v", c)
	}
}

// TestOrdersAreBounded: the board keeps the MaxOrders most recently
// updated orders; an old order that moves on is recent again.
func TestOrdersAreBounded(t *testing.T) {
	b := newBoard(t)
	const extra = 50
	id := func(i int) string { return fmt.Sprintf("o-%04d", i) }
	accepted := func(i int) cloudevents.Event {
		return event(t, "a-"+id(i), coffee.TypeOrderAccepted, cloudevents.ApplicationJSON, coffee.Accepted{OrderID: id(i), Customer: "c", Beverage: "tea"})
	}
	for i := range board.MaxOrders {
		feed(t, b, accepted(i))
	}
	// The oldest order moves on: it is now the most recent.
	feed(t, b, event(t, "r-0", coffee.TypeBeverageReady, cloudevents.ApplicationJSON, coffee.Ready{OrderID: id(0), Customer: "c", Beverage: "tea"}))
	for i := board.MaxOrders; i < board.MaxOrders+extra; i++ {
		feed(t, b, accepted(i))
	}

	got := snapshot(t, b)
	if len(got) != board.MaxOrders {
		t.Fatalf("the board keeps %d orders, want %d", len(got), board.MaxOrders)
	}
	kept := map[string]bool{}
	for i, o := range got {
		kept[o.OrderID] = true
		if i > 0 && o.Updated.Before(got[i-1].Updated) {
			t.Fatalf("snapshot not oldest first at %d: %s before %s", i, o.Updated, got[i-1].Updated)
		}
	}
	if !kept[id(0)] {
		t.Error("the order updated last was evicted")
	}
	for i := 1; i <= extra; i++ {
		if kept[id(i)] {
			t.Errorf("%s, among the %d oldest, was kept", id(i), extra)
		}
	}
	for i := extra + 1; i < board.MaxOrders+extra; i++ {
		if !kept[id(i)] {
			t.Errorf("%s, among the most recent, was evicted", id(i))
		}
	}
	total := 0
	for _, n := range b.Counts() {
		total += n
	}
	if c := b.Counts(); total != board.MaxOrders || c["ready"] != 1 || c["accepted"] != board.MaxOrders-1 {
		t.Errorf("counts = %v (total %d), want %d orders, one ready", c, total, board.MaxOrders)
	}
}
