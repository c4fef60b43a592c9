package main

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"knative.dev/eventing/pkg/kncloudevents/attributes"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// notifyServer runs the notify function, dead-letter route included, with
// K_SINK at sink ("" for none).
func notifyServer(t *testing.T, sink string) string {
	t.Helper()
	var dl deadLetters
	if sink != "" {
		s, err := serve.NewSink(sink, 0)
		if err != nil {
			t.Fatal(err)
		}
		dl.send = s.Send
	}
	srv, err := serve.New(serve.Config{Instance: "notify-test"}, handle, serve.Route{Path: deadLetterPath, Handler: dl.handle})
	if err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(srv)
	t.Cleanup(h.Close)
	return h.URL
}

const subscriber = "http://127.0.0.1:9999/"

// deadLetter posts e to target as a Trigger's dispatcher sends a dead letter:
// binary mode, with Knative's error extensions for a subscriber that
// answered code with body.
func deadLetter(t *testing.T, target string, e cloudevents.Event, code int, body string) (int, string) {
	t.Helper()
	dest, err := url.Parse(subscriber)
	if err != nil {
		t.Fatal(err)
	}
	data := base64.StdEncoding.EncodeToString([]byte(body))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cehttp.WriteRequest(t.Context(), binding.ToMessage(&e), req, attributes.KnativeErrorTransformers(*dest, code, data)...); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// placedWith builds an order.placed event with the given data as sent.
func placedWith(t *testing.T, id, contentType, data string) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/curl")
	e.SetType(coffee.TypeOrderPlaced)
	if contentType != "" {
		if err := e.SetData(contentType, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func failedOf(t *testing.T, e cloudevents.Event) coffee.Failed {
	t.Helper()
	var f coffee.Failed
	if err := coffee.Decode(e, &f); err != nil {
		t.Fatalf("order.failed data %q: %v", e.Data(), err)
	}
	return f
}

// TestRefusedOrdersBecomeOrderFailed: the three orders take-order can only
// refuse reach the dead-letter path, which tells the Broker they failed, with
// the order id the board knows and take-order's words as the reason.
func TestRefusedOrdersBecomeOrderFailed(t *testing.T) {
	broker := testkit.NewSink(t)
	url := notifyServer(t, broker.URL+"/default/default") + deadLetterPath
	const shape = `; an order is {"customer": "...", "beverage": "..."} as application/json`
	for _, tc := range []struct {
		name string
		in   cloudevents.Event
		body string
	}{
		{"text/plain", placedWith(t, "p-1", "text/plain", "latte"), `invalid order: unsupported datacontenttype "text/plain"` + shape + "\n"},
		{"empty body", placedWith(t, "p-2", "", ""), "invalid order: event has no data" + shape + "\n"},
		{"json string", placedWith(t, "p-3", "application/json", `"latte"`), "invalid order: decode com.koffeeshop.order.placed data: json: cannot unmarshal string into Go value of type coffee.Order" + shape + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(broker.Events())
			code, body := deadLetter(t, url, tc.in, http.StatusBadRequest, tc.body)
			if code != http.StatusOK || body != "" {
				t.Fatalf("dead letter answered %d %q, want 200 without a body", code, body)
			}
			stored := broker.Events()
			if len(stored) != before+1 {
				t.Fatalf("the broker got %d events, want 1", len(stored)-before)
			}
			out := stored[len(stored)-1]
			if out.Type() != coffee.TypeOrderFailed || out.Source() != "/koffeeshop/notify" {
				t.Errorf("sent %s from %s", out.Type(), out.Source())
			}
			if want := coffee.ReplyID(tc.in.Source(), tc.in.ID(), coffee.TypeOrderFailed); out.ID() != want {
				t.Errorf("id = %q, want %q (derived from the dead letter)", out.ID(), want)
			}
			want := coffee.Failed{
				OrderID:     coffee.OrderID(tc.in),
				Reason:      strings.TrimSpace(tc.body),
				Code:        http.StatusBadRequest,
				Destination: subscriber,
			}
			if got := failedOf(t, out); got != want {
				t.Errorf("failed = %+v\nwant     %+v", got, want)
			}
			if out.Subject() != want.OrderID {
				t.Errorf("subject = %q, want the order id", out.Subject())
			}
		})
	}
}

// TestDeadLettersOfOtherEvents: any dead letter of the shop tells which
// order failed, from its payload, else its subject; an order that decodes
// keeps its customer and beverage; no body gives the status as the reason.
func TestDeadLettersOfOtherEvents(t *testing.T) {
	broker := testkit.NewSink(t)
	url := notifyServer(t, broker.URL) + deadLetterPath

	placed := placedWith(t, "p-ok", "application/json", `{"customer":"ada","beverage":"latte"}`)
	accepted := placedWith(t, "a-1", "application/json", `{"orderId":"o-7","customer":"grace","beverage":"mocha"}`)
	accepted.SetType(coffee.TypeOrderAccepted)
	accepted.SetSource("/koffeeshop/take-order")
	bare := placedWith(t, "r-1", "application/json", `{"barista":"b-1"}`)
	bare.SetType(coffee.TypeBeverageReady)
	bare.SetSubject("o-8")
	opaque := placedWith(t, "x-1", "application/octet-stream", "\x00\x01")
	opaque.SetType("com.example.other")

	for _, tc := range []struct {
		name string
		in   cloudevents.Event
		code int
		want coffee.Failed
	}{
		{"placed, subscriber down", placed, 500, coffee.Failed{OrderID: coffee.OrderID(placed), Customer: "ada", Beverage: "latte", Reason: "subscriber answered 500", Code: 500, Destination: subscriber}},
		{"accepted", accepted, 503, coffee.Failed{OrderID: "o-7", Customer: "grace", Beverage: "mocha", Reason: "subscriber answered 503", Code: 503, Destination: subscriber}},
		{"ready without order id", bare, 404, coffee.Failed{OrderID: "o-8", Reason: "subscriber answered 404", Code: 404, Destination: subscriber}},
		{"not of the shop", opaque, 400, coffee.Failed{Reason: "subscriber answered 400", Code: 400, Destination: subscriber}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(broker.Events())
			if code, body := deadLetter(t, url, tc.in, tc.code, ""); code != http.StatusOK {
				t.Fatalf("dead letter answered %d %q", code, body)
			}
			stored := broker.Events()
			if len(stored) != before+1 {
				t.Fatalf("the broker got %d events, want 1", len(stored)-before)
			}
			if got := failedOf(t, stored[len(stored)-1]); got != tc.want {
				t.Errorf("failed = %+v\nwant     %+v", got, tc.want)
			}
		})
	}
}

// TestRedeliveredDeadLetterIsTheSameEvent: the dispatcher may deliver a dead
// letter again; the Broker dedups order.failed only if it is identical.
func TestRedeliveredDeadLetterIsTheSameEvent(t *testing.T) {
	broker := testkit.NewSink(t)
	url := notifyServer(t, broker.URL) + deadLetterPath
	in := placedWith(t, "again", "text/plain", "latte")
	for range 2 {
		if code, body := deadLetter(t, url, in, 400, "invalid order"); code != http.StatusOK {
			t.Fatalf("answered %d %q", code, body)
		}
	}
	got := broker.Events()
	if len(got) != 2 {
		t.Fatalf("%d events sent, want 2", len(got))
	}
	if got[0].ID() != got[1].ID() || string(got[0].Data()) != string(got[1].Data()) || got[0].Subject() != got[1].Subject() {
		t.Errorf("a redelivery sent another event:\n%s\n%s", got[0], got[1])
	}
}

// TestDeadLetterRetriedUntilTold: when the Broker does not take order.failed,
// the dead letter is answered 5xx, which the dispatcher retries.
func TestDeadLetterRetriedUntilTold(t *testing.T) {
	broker := testkit.NewSink(t)
	url := notifyServer(t, broker.URL) + deadLetterPath
	in := placedWith(t, "retry", "text/plain", "latte")

	broker.Answer(http.StatusServiceUnavailable)
	code, body := deadLetter(t, url, in, 400, "invalid order")
	if code != http.StatusBadGateway || !strings.Contains(body, "503") {
		t.Errorf("broker refusing: answered %d %q, want 502 naming the broker's 503", code, body)
	}

	broker.Answer(http.StatusAccepted)
	if code, body := deadLetter(t, url, in, 400, "invalid order"); code != http.StatusOK {
		t.Errorf("broker back: answered %d %q", code, body)
	}
	if n := len(broker.Events()); n != 1 {
		t.Errorf("%d events stored, want 1", n)
	}

	broker.Close()
	if code, _ := deadLetter(t, url, in, 400, "invalid order"); code != http.StatusBadGateway {
		t.Errorf("broker gone: answered %d, want 502", code)
	}

	noSink := notifyServer(t, "") + deadLetterPath
	if code, body := deadLetter(t, noSink, in, 400, "invalid order"); code != http.StatusServiceUnavailable || !strings.Contains(body, "K_SINK") {
		t.Errorf("no K_SINK: answered %d %q, want 503", code, body)
	}
}

func TestDeadLetterRefusals(t *testing.T) {
	broker := testkit.NewSink(t)
	base := notifyServer(t, broker.URL)

	// An order.failed that could not be delivered is not told again.
	failed := placedWith(t, "f-1", "application/json", `{"orderId":"o-1","reason":"x"}`)
	failed.SetType(coffee.TypeOrderFailed)
	if code, body := deadLetter(t, base+deadLetterPath, failed, 400, "no"); code != http.StatusOK {
		t.Errorf("dead-lettered order.failed: answered %d %q, want 200", code, body)
	}

	// An event that is no dead letter is refused for good.
	plain := placedWith(t, "n-1", "text/plain", "latte")
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+deadLetterPath, nil)
	if err := cehttp.WriteRequest(t.Context(), binding.ToMessage(&plain), req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("not a dead letter: answered %d, want 400", resp.StatusCode)
	}

	// The main path is untouched: a dead letter posted there is refused.
	if code, _ := deadLetter(t, base+"/", plain, 400, "no"); code != http.StatusBadRequest {
		t.Errorf("dead letter on /: answered %d, want 400", code)
	}
	if n := len(broker.Events()); n != 0 {
		t.Errorf("%d events sent, want none", n)
	}
}

// TestErrorDataIsDecodedLeniently: Knative cuts knativeerrordata at 1024
// base64 characters, wherever that falls.
func TestErrorDataIsDecodedLeniently(t *testing.T) {
	long := strings.Repeat("é", 900) // 1800 bytes, 2400 base64 characters
	enc := base64.StdEncoding.EncodeToString([]byte(long))
	for _, tc := range []struct {
		name, in, want string
	}{
		{"whole", base64.StdEncoding.EncodeToString([]byte("invalid order\n")), "invalid order\n"},
		{"no padding", base64.RawStdEncoding.EncodeToString([]byte("invalid order")), "invalid order"},
		{"url alphabet", base64.RawURLEncoding.EncodeToString([]byte("??>>")), "??>>"},
		{"cut padding", strings.TrimSuffix(base64.StdEncoding.EncodeToString([]byte("ab")), "="), "ab"},
		{"dangling character", base64.StdEncoding.EncodeToString([]byte("abc")) + "Z", "abc"},
		{"empty", "", ""},
		{"garbage", "!!!!", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorData(tc.in); got != tc.want {
				t.Errorf("errorData(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	for _, cut := range []int{1024, 1023, 1022, 1021} {
		got := errorData(enc[:cut])
		if !utf8.ValidString(got) || !strings.HasPrefix(long, got) || len(got) < 760 {
			t.Errorf("cut at %d: %d bytes, valid UTF-8 %v, a prefix %v", cut, len(got), utf8.ValidString(got), strings.HasPrefix(long, got))
		}
	}

	// Through the handler: a reason cut by Knative says so.
	in := placedWith(t, "cut", "text/plain", "latte")
	in.SetExtension(extErrorDest, subscriber)
	in.SetExtension(extErrorCode, 400)
	in.SetExtension(extErrorData, enc[:maxErrorData])
	var sent []cloudevents.Event
	d := deadLetters{send: func(_ context.Context, e cloudevents.Event) error { sent = append(sent, e); return nil }}
	if _, err := d.handle(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 1 {
		t.Fatalf("%d events sent", len(sent))
	}
	if r := failedOf(t, sent[0]).Reason; !strings.HasSuffix(r, "…") || !strings.HasPrefix(r, "éé") {
		t.Errorf("reason of a cut body = %q…", r[:min(len(r), 20)])
	}
	d.send = func(context.Context, cloudevents.Event) error { return errors.New("sink down") }
	if _, err := d.handle(context.Background(), in); serve.StatusCode(err) != http.StatusBadGateway {
		t.Errorf("sink down: %v, want 502", err)
	}
}
