package broker_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// TestStoredFormIsNATSBinaryMode: the stream holds the CloudEvents NATS
// binding's binary mode, attributes in ce- headers (percent-encoded) and
// the request's data byte for byte, even when it is not what its
// content type says.
func TestStoredFormIsNATSBinaryMode(t *testing.T) {
	env := startBroker(t)
	body := `{"customer": "a", beverage`
	resp, msg := testkit.Post(t, env.url+"/default/default", binaryHeaders("raw-1", map[string]string{
		"ce-subject": "shop%20front", "ce-comment": "caf%C3%A9 %22ok%22",
	}), body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", resp.StatusCode, msg)
	}
	stored, err := env.stream.GetLastMsgForSubject(context.Background(), env.ref.Subject())
	if err != nil {
		t.Fatal(err)
	}
	if string(stored.Data) != body {
		t.Fatalf("stored payload %q, want the request body %q", stored.Data, body)
	}
	for k, want := range map[string]string{
		"ce-specversion": "1.0", "ce-id": "raw-1", "ce-subject": "shop%20front",
		"ce-type": "com.example.t", "ce-comment": "caf%C3%A9%20%22ok%22", "content-type": "application/json",
	} {
		if got := stored.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	ev, err := broker.Decode(stored.Header, stored.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Subject() != "shop front" || ev.Extensions()["comment"] != `café "ok"` || string(ev.Data()) != body {
		t.Fatalf("decoded %s", ev)
	}
}

// TestEarlierStoredFormStillDecodes: a data dir written before the binary
// form (structured JSON, Content-Type: application/cloudevents+json) is
// still read.
func TestEarlierStoredFormStillDecodes(t *testing.T) {
	env := startBroker(t)
	old := &nats.Msg{Subject: env.ref.TypeSubject("com.example.old"), Header: nats.Header{
		"Content-Type": {"application/cloudevents+json"}, "Ce-Type": {"com.example.old"},
		jetstream.MsgIDHeader: {broker.MsgID("/old", "o-1")},
	}, Data: []byte(`{"specversion":"1.0","id":"o-1","source":"/old","type":"com.example.old","datacontenttype":"application/json","data":{"x":1},"knativebrokerttl":255}`)}
	if _, err := env.js.PublishMsg(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	stored, err := env.stream.GetLastMsgForSubject(context.Background(), env.ref.Subject())
	if err != nil {
		t.Fatal(err)
	}
	ev, err := broker.Decode(stored.Header, stored.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.ID() != "o-1" || ev.Source() != "/old" || string(ev.Data()) != `{"x":1}` {
		t.Fatalf("decoded %s", ev)
	}
	if _, err := broker.Decode(nats.Header{"Content-Type": {"text/plain"}}, []byte("hi")); err == nil {
		t.Fatal("a message in neither form decoded")
	}
}

// TestIngressErrorsSayWhatIsWrong: an unsupported specversion is named,
// in either mode, and a malformed percent-encoding is refused.
func TestIngressErrorsSayWhatIsWrong(t *testing.T) {
	env := startBroker(t)
	url := env.url + "/default/default"
	const want = `specversion "2.0" is not supported (1.0, 0.3)`
	if resp, body := testkit.Post(t, url, binaryHeaders("v2", map[string]string{"ce-specversion": "2.0"}), `{}`); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, want) {
		t.Fatalf("binary 2.0: %d %q", resp.StatusCode, body)
	}
	if resp, body := testkit.Post(t, url, map[string]string{"content-type": cloudevents.ApplicationCloudEventsJSON},
		`{"specversion":"2.0","id":"v2","source":"/s","type":"t"}`); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, want) {
		t.Fatalf("structured 2.0: %d %q", resp.StatusCode, body)
	}
	if resp, body := testkit.Post(t, url, binaryHeaders("pct", map[string]string{"ce-source": "/a%zz"}), `{}`); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "percent-encoding") {
		t.Fatalf("malformed percent-encoding: %d %q", resp.StatusCode, body)
	}
}

// TestLongTypeKeepsTheConnection: an event type far longer than NATS's
// 4 KiB protocol line is stored (its subject token is a hash) and the
// connection stays up for the next event.
func TestLongTypeKeepsTheConnection(t *testing.T) {
	env := startBroker(t)
	long := "com.example." + strings.Repeat("x", 8000)
	if resp, body := testkit.Post(t, env.url+"/default/default", binaryHeaders("long-type", map[string]string{"ce-type": long}), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("long type: %d %s", resp.StatusCode, body)
	}
	if resp, body := testkit.Post(t, env.url+"/default/default", binaryHeaders("after-long", nil), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("the next event: %d %s", resp.StatusCode, body)
	}
	stored, err := env.stream.GetLastMsgForSubject(context.Background(), env.ref.TypeSubject(long))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := broker.Decode(stored.Header, stored.Data); err != nil || ev.Type() != long {
		t.Fatalf("stored %v, %v", ev.Type()[:40], err)
	}
	if n := len(env.ref.TypeSubject(long)); n > 300 {
		t.Fatalf("subject of %d bytes", n)
	}
}
