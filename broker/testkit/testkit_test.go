package testkit_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

func TestSinkTakesBothModes(t *testing.T) {
	sink := testkit.NewSink(t)
	if resp, body := testkit.PostBinary(t, sink.URL, testkit.Event("b-1", "/kit", "com.example.a", `{"n":1}`)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("binary: %d %s", resp.StatusCode, body)
	}
	if resp, body := testkit.PostStructured(t, sink.URL, testkit.Event("s-1", "/kit", "com.example.b", `{"n":2}`)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("structured: %d %s", resp.StatusCode, body)
	}
	got := sink.Wait(t, 2, 5*time.Second)
	if len(got) != 2 || got[0].ID() != "b-1" || got[1].ID() != "s-1" || string(got[1].Data()) != `{"n":2}` {
		t.Fatalf("sink took %v", got)
	}
	if b := sink.WaitType(t, "com.example.b", 1, time.Second); len(b) != 1 || b[0].ID() != "s-1" {
		t.Fatalf("of type b: %v", b)
	}

	sink.Answer(http.StatusServiceUnavailable)
	if resp, _ := testkit.PostBinary(t, sink.URL, testkit.Event("b-2", "/kit", "com.example.a", `{}`)); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("answer 503: %d", resp.StatusCode)
	}
	if resp, _ := testkit.Post(t, sink.URL, map[string]string{"content-type": "application/json"}, `{}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("not a CloudEvent: %d, want 400", resp.StatusCode)
	}
	if got := sink.Events(); len(got) != 2 {
		t.Fatalf("the sink kept %d events, want the 2 it took", len(got))
	}
}

func TestJetStreamStoresAndStops(t *testing.T) {
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL())
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "KIT", Subjects: []string{"kit.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), "kit.a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	testkit.WaitFor(t, 10*time.Second, "the client sees the server gone", func() bool { return !js.Conn().IsConnected() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, "kit.a", []byte("y")); err == nil {
		t.Fatal("published to a server that is gone")
	}
}

func TestPollAndGetOK(t *testing.T) {
	n := 0
	if err := testkit.Poll(5*time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d looks, want nil after 3", err, n)
	}
	if err := testkit.Poll(10*time.Millisecond, func() error { return errors.New("never") }); err == nil || !strings.Contains(err.Error(), "never") {
		t.Fatalf("Poll of a condition never met = %v, want its last error", err)
	}
	// A sink answers a GET, which is no CloudEvent, with 400.
	if err := testkit.GetOK(testkit.NewSink(t).URL); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("GetOK of a 400 = %v", err)
	}
}
