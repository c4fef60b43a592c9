package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

func accepted(t *testing.T, id string, data any) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/koffeeshop/take-order")
	e.SetType(coffee.TypeOrderAccepted)
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		t.Fatalf("set data: %v", err)
	}
	return e
}

func baristaCtx(buf *bytes.Buffer, instance string) context.Context {
	ctx := serve.WithLogger(context.Background(), slog.New(slog.NewTextHandler(buf, nil)))
	return serve.WithInstance(ctx, instance)
}

func sampleOrder() coffee.Accepted {
	return coffee.Accepted{OrderID: "order-7", Customer: "ada", Beverage: "latte"}
}

func TestBrewsBeverage(t *testing.T) {
	var logs bytes.Buffer
	in := accepted(t, "acc-1", sampleOrder())

	out, err := barista{}.handle(baristaCtx(&logs, "barista-1"), in)
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	if out.Type() != coffee.TypeBeverageReady {
		t.Fatalf("reply type = %q, want %q", out.Type(), coffee.TypeBeverageReady)
	}
	if got, want := out.ID(), coffee.ReplyID(in.Source(), in.ID(), coffee.TypeBeverageReady); got != want {
		t.Errorf("reply id = %q, want %q", got, want)
	}
	if out.Source() != "/koffeeshop/prepare-beverage" || out.Subject() != "order-7" {
		t.Errorf("reply source %q subject %q", out.Source(), out.Subject())
	}
	var ready coffee.Ready
	if err := json.Unmarshal(out.Data(), &ready); err != nil {
		t.Fatalf("reply data %q: %v", out.Data(), err)
	}
	want := coffee.Ready{OrderID: "order-7", Customer: "ada", Beverage: "latte", Barista: "barista-1"}
	if ready != want {
		t.Errorf("ready = %+v, want %+v", ready, want)
	}
	for _, w := range []string{`msg="beverage ready"`, "orderId=order-7", "barista=barista-1"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %q: %s", w, logs.String())
		}
	}
}

func TestBrewTakesBrewTime(t *testing.T) {
	const brewTime = 80 * time.Millisecond
	begin := time.Now()
	if _, err := (barista{brewTime: brewTime}).handle(context.Background(), accepted(t, "acc-2", sampleOrder())); err != nil {
		t.Fatalf("handle: %v", err)
	}
	if elapsed := time.Since(begin); elapsed < brewTime {
		t.Errorf("brewed in %v, want at least %v", elapsed, brewTime)
	}
}

func TestBrewStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)

	begin := time.Now()
	out, err := barista{brewTime: time.Hour}.handle(ctx, accepted(t, "acc-3", sampleOrder()))
	if out != nil {
		t.Errorf("unexpected reply %s", out)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if code := serve.StatusCode(err); code != http.StatusInternalServerError {
		t.Errorf("status = %d, want 500 so the order is redelivered", code)
	}
	if elapsed := time.Since(begin); elapsed > 10*time.Second {
		t.Errorf("cancellation took %v", elapsed)
	}
}

func TestRefusesBadRequests(t *testing.T) {
	wrongType := accepted(t, "bad-1", sampleOrder())
	wrongType.SetType(coffee.TypeOrderPlaced)
	malformed := accepted(t, "bad-2", nil)
	if err := malformed.SetData(cloudevents.ApplicationJSON, []byte(`{"orderId":`)); err != nil {
		t.Fatal(err)
	}

	for name, in := range map[string]cloudevents.Event{
		"wrong type":       wrongType,
		"malformed json":   malformed,
		"missing order id": accepted(t, "bad-3", coffee.Accepted{Customer: "ada", Beverage: "latte"}),
	} {
		t.Run(name, func(t *testing.T) {
			out, err := barista{brewTime: time.Hour}.handle(context.Background(), in)
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
	ctx := serve.WithInstance(context.Background(), "barista-2")
	first, err := barista{}.handle(ctx, accepted(t, "same", sampleOrder()))
	if err != nil {
		t.Fatal(err)
	}
	again, err := barista{}.handle(ctx, accepted(t, "same", sampleOrder()))
	if err != nil {
		t.Fatal(err)
	}
	other, err := barista{}.handle(ctx, accepted(t, "other", sampleOrder()))
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

func TestProgressEventOnStart(t *testing.T) {
	var got []cloudevents.Event
	b := barista{progress: func(_ context.Context, e cloudevents.Event) error {
		got = append(got, e)
		return nil
	}}
	in := cloudevents.NewEvent()
	in.SetID("acc-1")
	in.SetSource("/koffeeshop/take-order")
	in.SetType(coffee.TypeOrderAccepted)
	_ = in.SetData(cloudevents.ApplicationJSON, coffee.Accepted{OrderID: "o-1", Customer: "ada", Beverage: "latte"})
	ctx := serve.WithInstance(context.Background(), "prepare-beverage-7")
	if _, err := b.handle(ctx, in); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Type() != coffee.TypeBeveragePreparing || got[0].Subject() != "o-1" {
		t.Fatalf("progress events %v", got)
	}
	var r coffee.Ready
	if err := coffee.Decode(got[0], &r); err != nil || r.Barista != "prepare-beverage-7" {
		t.Fatalf("progress payload %+v (%v)", r, err)
	}
}

// TestProgressEventReachesSink: with a K_SINK, the preparing event goes to
// it over HTTP before the beverage is ready, and a sink that refuses it
// does not stop the brew.
func TestProgressEventReachesSink(t *testing.T) {
	srv := testkit.NewSink(t)
	sink, err := serve.NewSink(srv.URL+"/default/default", progressTimeout)
	if err != nil {
		t.Fatal(err)
	}
	b := barista{progress: sink.Send}
	in := accepted(t, "acc-sink", sampleOrder())
	if _, err := b.handle(serve.WithInstance(context.Background(), "prepare-beverage-3"), in); err != nil {
		t.Fatal(err)
	}
	if got := srv.Events(); len(got) != 1 || got[0].Type() != coffee.TypeBeveragePreparing || got[0].ID() != coffee.ReplyID(in.Source(), in.ID(), coffee.TypeBeveragePreparing) {
		t.Fatalf("sink received %v", got)
	}
	srv.Answer(http.StatusServiceUnavailable)

	var logs bytes.Buffer
	out, err := b.handle(baristaCtx(&logs, "prepare-beverage-3"), accepted(t, "acc-sink-2", sampleOrder()))
	if err != nil || out.Type() != coffee.TypeBeverageReady {
		t.Fatalf("a refused progress event stopped the brew: %v", err)
	}
	if !strings.Contains(logs.String(), "progress event not sent") {
		t.Errorf("refused progress event not logged: %s", logs.String())
	}
}
