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

func ready(t *testing.T, id string, data any) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/koffeeshop/prepare-beverage")
	e.SetType(coffee.TypeBeverageReady)
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		t.Fatalf("set data: %v", err)
	}
	return e
}

func sampleReady() coffee.Ready {
	return coffee.Ready{OrderID: "order-9", Customer: "ada", Beverage: "latte", Barista: "barista-1"}
}

func TestNotifiesCustomer(t *testing.T) {
	var logs bytes.Buffer
	ctx := serve.WithLogger(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)))
	in := ready(t, "ready-1", sampleReady())

	out, err := handle(ctx, in)
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	if out.Type() != coffee.TypeCustomerNotified {
		t.Fatalf("reply type = %q, want %q", out.Type(), coffee.TypeCustomerNotified)
	}
	if got, want := out.ID(), coffee.ReplyID(in.Source(), in.ID(), coffee.TypeCustomerNotified); got != want {
		t.Errorf("reply id = %q, want %q", got, want)
	}
	if out.Source() != "/koffeeshop/notify" || out.Subject() != "order-9" {
		t.Errorf("reply source %q subject %q", out.Source(), out.Subject())
	}
	var got coffee.Notified
	if err := json.Unmarshal(out.Data(), &got); err != nil {
		t.Fatalf("reply data %q: %v", out.Data(), err)
	}
	want := coffee.Notified{
		OrderID:  "order-9",
		Customer: "ada",
		Beverage: "latte",
		Barista:  "barista-1",
		Message:  "ada, your latte is ready (made by barista-1)",
	}
	if got != want {
		t.Errorf("notified = %+v, want %+v", got, want)
	}
	for _, w := range []string{`msg="customer notified"`, "orderId=order-9", "customer=ada"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %q: %s", w, logs.String())
		}
	}
}

func TestMessageWithoutBarista(t *testing.T) {
	r := sampleReady()
	r.Barista = ""
	if got, want := message(r), "ada, your latte is ready"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}

func TestRefusesBadRequests(t *testing.T) {
	wrongType := ready(t, "bad-1", sampleReady())
	wrongType.SetType(coffee.TypeOrderAccepted)
	malformed := ready(t, "bad-2", nil)
	if err := malformed.SetData(cloudevents.ApplicationJSON, []byte(`not json`)); err != nil {
		t.Fatal(err)
	}
	noCustomer := sampleReady()
	noCustomer.Customer = ""

	for name, in := range map[string]cloudevents.Event{
		"wrong type":     wrongType,
		"malformed json": malformed,
		"no customer":    ready(t, "bad-3", noCustomer),
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

func TestRepliesAreDeterministic(t *testing.T) {
	first, err := handle(context.Background(), ready(t, "same", sampleReady()))
	if err != nil {
		t.Fatal(err)
	}
	again, err := handle(context.Background(), ready(t, "same", sampleReady()))
	if err != nil {
		t.Fatal(err)
	}
	other, err := handle(context.Background(), ready(t, "other", sampleReady()))
	if err != nil {
		t.Fatal(err)
	}
	if first.ID() != again.ID() || !bytes.Equal(first.Data(), again.Data()) {
		t.Errorf("redelivery changed the reply: %s vs %s", first, again)
	}
	if other.ID() == first.ID() {
		t.Errorf("different input id gave the same reply id %q", other.ID())
	}
}
