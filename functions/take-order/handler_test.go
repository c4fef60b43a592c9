package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

func placed(t *testing.T, id, data string) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/koffeeshop/web")
	e.SetType(coffee.TypeOrderPlaced)
	if err := e.SetData(cloudevents.ApplicationJSON, []byte(data)); err != nil {
		t.Fatalf("set data: %v", err)
	}
	return e
}

func logCtx(buf *bytes.Buffer) context.Context {
	return serve.WithLogger(context.Background(), slog.New(slog.NewTextHandler(buf, nil)))
}

func decode[T any](t *testing.T, e *cloudevents.Event) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Data(), &v); err != nil {
		t.Fatalf("decode reply data %q: %v", e.Data(), err)
	}
	return v
}

func TestAcceptsOrder(t *testing.T) {
	var logs bytes.Buffer
	in := placed(t, "order-1", `{"customer":"ada","beverage":"latte"}`)

	out, err := handle(logCtx(&logs), in)
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	orderID := coffee.OrderID(in)
	if out.Type() != coffee.TypeOrderAccepted {
		t.Fatalf("reply type = %q, want %q", out.Type(), coffee.TypeOrderAccepted)
	}
	if got, want := out.ID(), coffee.ReplyID(in.Source(), in.ID(), coffee.TypeOrderAccepted); got != want {
		t.Errorf("reply id = %q, want %q", got, want)
	}
	if out.Source() != "/koffeeshop/take-order" {
		t.Errorf("reply source = %q", out.Source())
	}
	if out.Subject() != orderID {
		t.Errorf("reply subject = %q, want order id %q", out.Subject(), orderID)
	}
	got := decode[coffee.Accepted](t, out)
	if want := (coffee.Accepted{OrderID: orderID, Customer: "ada", Beverage: "latte"}); got != want {
		t.Errorf("accepted = %+v, want %+v", got, want)
	}
	for _, want := range []string{`msg="order accepted"`, "orderId=" + orderID, "customer=ada", "beverage=latte"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q: %s", want, logs.String())
		}
	}
}

func TestNormalisesOrder(t *testing.T) {
	out, err := handle(context.Background(), placed(t, "order-2", `{"customer":"  grace ","beverage":" Flat-White"}`))
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	if out.Type() != coffee.TypeOrderAccepted {
		t.Fatalf("reply type = %q", out.Type())
	}
	got := decode[coffee.Accepted](t, out)
	if got.Customer != "grace" || got.Beverage != "flat-white" {
		t.Errorf("accepted = %+v, want trimmed customer and canonical beverage", got)
	}
}

func TestRejectsOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   string
		reason string
	}{
		{"missing customer", `{"beverage":"latte"}`, "customer is required"},
		{"blank customer", `{"customer":"  \t","beverage":"latte"}`, "customer is required"},
		{"unknown beverage", `{"customer":"ada","beverage":"xyz"}`, `unknown beverage "xyz": the menu is espresso, americano, latte, cappuccino, flat-white, mocha, tea`},
		{"near miss", `{"customer":"ada","beverage":"flatwhite"}`, `unknown beverage "flatwhite": the menu is espresso, americano, latte, cappuccino, flat-white, mocha, tea`},
		{"customer name too long", `{"customer":"` + strings.Repeat("é", 65) + `","beverage":"latte"}`, "customer name is 65 characters long: at most 64"},
		{"missing beverage", `{"customer":"ada"}`, "beverage is required"},
		{"blank customer and beverage", `{"customer":"","beverage":"xyz"}`, "customer is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			in := placed(t, "order-"+tc.name, tc.data)
			out, err := handle(logCtx(&logs), in)
			if err != nil {
				t.Fatalf("handle: %v", err)
			}
			if out.Type() != coffee.TypeOrderRejected {
				t.Fatalf("reply type = %q, want %q", out.Type(), coffee.TypeOrderRejected)
			}
			if got, want := out.ID(), coffee.ReplyID(in.Source(), in.ID(), coffee.TypeOrderRejected); got != want {
				t.Errorf("reply id = %q, want %q", got, want)
			}
			got := decode[coffee.Rejected](t, out)
			if got.Reason != tc.reason {
				t.Errorf("reason = %q, want %q", got.Reason, tc.reason)
			}
			if got.OrderID != coffee.OrderID(in) || out.Subject() != got.OrderID {
				t.Errorf("order id = %q, subject %q, want %q", got.OrderID, out.Subject(), coffee.OrderID(in))
			}
			if !strings.Contains(logs.String(), `msg="order rejected"`) {
				t.Errorf("rejection not logged: %s", logs.String())
			}
		})
	}
}

func TestRefusesBadRequests(t *testing.T) {
	wrongType := placed(t, "x-1", `{"customer":"ada","beverage":"latte"}`)
	wrongType.SetType(coffee.TypeOrderAccepted)
	notJSON := placed(t, "x-2", `{}`)
	if err := notJSON.SetData(cloudevents.TextPlain, []byte("ada latte")); err != nil {
		t.Fatal(err)
	}
	noData := placed(t, "x-3", `{}`)
	noData.DataEncoded = nil

	for name, in := range map[string]cloudevents.Event{
		"wrong type":     wrongType,
		"malformed json": placed(t, "x-4", `{"customer":"ada",`),
		"json array":     placed(t, "x-5", `["ada","latte"]`),
		"customer type":  placed(t, "x-6", `{"customer":42,"beverage":"latte"}`),
		"not json":       notJSON,
		"no data":        noData,
	} {
		t.Run(name, func(t *testing.T) {
			out, err := handle(context.Background(), in)
			if out != nil {
				t.Errorf("unexpected reply %s", out)
			}
			if code := serve.StatusCode(err); code != http.StatusBadRequest {
				t.Errorf("status = %d (%v), want 400", code, err)
			}
		})
	}
}

// TestUndecodableOrderShowsTheShape: the refusal of data that is not an
// order says what an order looks like, whatever was wrong with it.
func TestUndecodableOrderShowsTheShape(t *testing.T) {
	text := placed(t, "s-1", `{}`)
	if err := text.SetData(cloudevents.TextPlain, []byte("latte")); err != nil {
		t.Fatal(err)
	}
	empty := placed(t, "s-2", `{}`)
	empty.DataEncoded = nil
	for name, tc := range map[string]struct {
		in    cloudevents.Event
		cause string
	}{
		"text/plain":  {text, `unsupported datacontenttype "text/plain"`},
		"no data":     {empty, "event has no data"},
		"json string": {placed(t, "s-3", `"latte"`), "cannot unmarshal string"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := handle(context.Background(), tc.in)
			if code := serve.StatusCode(err); code != http.StatusBadRequest {
				t.Fatalf("status = %d (%v), want 400", code, err)
			}
			msg := serve.Message(err)
			for _, want := range []string{"invalid order: ", tc.cause, `an order is {"customer": "...", "beverage": "..."} as application/json`} {
				if !strings.Contains(msg, want) {
					t.Errorf("refusal %q lacks %q", msg, want)
				}
			}
		})
	}
}

func TestRepliesAreDeterministic(t *testing.T) {
	const data = `{"customer":"ada","beverage":"mocha"}`
	first, err := handle(context.Background(), placed(t, "same", data))
	if err != nil {
		t.Fatal(err)
	}
	again, err := handle(context.Background(), placed(t, "same", data))
	if err != nil {
		t.Fatal(err)
	}
	other, err := handle(context.Background(), placed(t, "other", data))
	if err != nil {
		t.Fatal(err)
	}

	if first.ID() != again.ID() {
		t.Errorf("redelivery changed the reply id: %q vs %q", first.ID(), again.ID())
	}
	a, b := decode[coffee.Accepted](t, first), decode[coffee.Accepted](t, again)
	if a.OrderID != b.OrderID || a.OrderID == "" {
		t.Errorf("redelivery changed the order id: %q vs %q", a.OrderID, b.OrderID)
	}
	if !bytes.Equal(first.Data(), again.Data()) {
		t.Errorf("redelivery changed the data: %s vs %s", first.Data(), again.Data())
	}
	if other.ID() == first.ID() {
		t.Errorf("different input id gave the same reply id %q", other.ID())
	}
	if c := decode[coffee.Accepted](t, other); c.OrderID == a.OrderID {
		t.Errorf("different input id gave the same order id %q", c.OrderID)
	}
}
