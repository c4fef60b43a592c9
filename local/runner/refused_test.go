package runner_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/board"
	"github.com/koffeeshop/koffeeshop/local/runner"
)

// A 202 is a promise: an order the Broker accepted and take-order can only
// refuse (400, never retried) goes to the Broker's dead-letter sink, notify's
// /dead-letter path, which tells whoever ordered with order.failed.
func TestRefusedOrdersAreDeadLettered(t *testing.T) {
	s := startShop(t)
	url := s.IngressURL() + "/default/default"
	const source = "/refused"
	cases := []struct {
		name, id, contentType, body string
		cause                       string // in take-order's refusal
	}{
		{"text/plain", "refused-text", "text/plain", "latte", `unsupported datacontenttype "text/plain"`},
		{"empty body", "refused-empty", "", "", "event has no data"},
		{"JSON string", "refused-string", "application/json", `"latte"`, "cannot unmarshal string"},
	}
	orderIDs := map[string]int{} // order id -> case
	for i, tc := range cases {
		ev := testkit.Event(tc.id, source, coffee.TypeOrderPlaced, "")
		if tc.contentType != "" {
			_ = ev.SetData(tc.contentType, []byte(tc.body))
		}
		if resp, b := testkit.PostBinary(t, url, ev); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: the Broker answered %d (%s), want 202", tc.name, resp.StatusCode, b)
		}
		placed := cloudevents.NewEvent()
		placed.SetSource(source)
		placed.SetID(tc.id)
		orderIDs[coffee.OrderID(placed)] = i
	}

	failed := s.collector.WaitType(t, coffee.TypeOrderFailed, len(cases), 60*time.Second)
	seen := map[string]bool{}
	for _, e := range failed {
		var f coffee.Failed
		if err := coffee.Decode(e, &f); err != nil {
			t.Fatalf("order.failed data: %v", err)
		}
		i, ok := orderIDs[f.OrderID]
		if !ok {
			t.Errorf("order.failed for an order never placed: %+v", f)
			continue
		}
		tc := cases[i]
		seen[tc.name] = true
		if e.Source() != "/koffeeshop/notify" || e.Subject() != f.OrderID {
			t.Errorf("%s: order.failed from %q about %q", tc.name, e.Source(), e.Subject())
		}
		if want := coffee.ReplyID(source, tc.id, coffee.TypeOrderFailed); e.ID() != want {
			t.Errorf("%s: order.failed id %q, want %q (derived from the dead letter)", tc.name, e.ID(), want)
		}
		if !strings.HasPrefix(f.Reason, "invalid order: ") || !strings.Contains(f.Reason, tc.cause) || !strings.Contains(f.Reason, `{"customer": "...", "beverage": "..."}`) {
			t.Errorf("%s: reason %q, want take-order's refusal naming %q and the shape of an order", tc.name, f.Reason, tc.cause)
		}
		if f.Code != http.StatusBadRequest || f.Destination == "" {
			t.Errorf("%s: code %d, destination %q; want take-order's 400 and its address", tc.name, f.Code, f.Destination)
		}
		if f.Customer != "" || f.Beverage != "" {
			t.Errorf("%s: customer %q, beverage %q from data that is no order", tc.name, f.Customer, f.Beverage)
		}
	}
	if len(seen) != len(cases) || len(failed) != len(cases) {
		t.Errorf("%d order.failed events for %v, want one for each of the %d refused orders", len(failed), seen, len(cases))
	}
	for _, typ := range []string{coffee.TypeOrderAccepted, coffee.TypeOrderRejected} {
		if n := len(s.collector.OfType(typ)); n != 0 {
			t.Errorf("%d %s events for orders take-order cannot read", n, typ)
		}
	}

	// The take-order Trigger counted its dead letters, and dropped nothing.
	st := waitTriggerStatus(t, s.IngressURL(), "default/take-order", func(st runner.TriggerStatus) bool {
		return st.DeadLettered >= int64(len(cases))
	})
	if st.DeadLettered != int64(len(cases)) || st.Terminated != 0 {
		t.Errorf("take-order Trigger %+v, want %d dead-lettered and none terminated", st, len(cases))
	}

	// The board shows each order failed, with its reason.
	boardFailed(t, s.IngressURL(), orderIDs)
}

// waitTriggerStatus polls GET /status until the named Trigger satisfies ok.
func waitTriggerStatus(t *testing.T, base, name string, ok func(runner.TriggerStatus) bool) runner.TriggerStatus {
	t.Helper()
	var found *runner.TriggerStatus
	testkit.Eventually(t, 10*time.Second, "Trigger "+name+" in GET /status", func() error {
		resp, err := http.Get(base + "/status")
		if err != nil {
			t.Fatal(err)
		}
		var st runner.Status
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET /status: %v", err)
		}
		found = nil
		for i := range st.Triggers {
			if st.Triggers[i].Name == name {
				found = &st.Triggers[i]
			}
		}
		if found == nil {
			t.Fatalf("GET /status has no Trigger %s: %+v", name, st.Triggers)
		}
		if !ok(*found) {
			return fmt.Errorf("%+v", *found)
		}
		return nil
	})
	return *found
}

// boardFailed reads the board's event stream until every order in ids is
// shown failed with a reason.
func boardFailed(t *testing.T, base string, ids map[string]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+board.EventsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	shown := map[string]board.Order{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = v
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || event != "order" {
			continue
		}
		var o board.Order
		if err := json.Unmarshal([]byte(data), &o); err != nil {
			t.Fatalf("board order %q: %v", data, err)
		}
		if _, mine := ids[o.OrderID]; mine && o.Stage == "failed" && o.Reason != "" {
			shown[o.OrderID] = o
		}
		if len(shown) == len(ids) {
			return
		}
	}
	t.Fatalf("the board showed %d of the %d refused orders as failed (%v)", len(shown), len(ids), fmt.Sprint(sc.Err()))
}
