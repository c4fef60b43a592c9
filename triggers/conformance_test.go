package triggers_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	kbroker "knative.dev/eventing/pkg/broker"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// Tolerances for the spacing of attempts: JetStream redelivers no earlier
// than asked, and a loaded 2-core machine may add some latency.
const (
	early = 15 * time.Millisecond
	late  = 600 * time.Millisecond
)

type result string

const (
	delivered    result = "delivered"
	deadLettered result = "dead_lettered"
	terminated   result = "terminated"
)

// conformanceCase is one rule of Knative's Trigger delivery contract.
type conformanceCase struct {
	name           string
	brokerDelivery string // spec.delivery of the Broker, YAML
	filter         string // spec.filter of the Trigger, YAML
	delivery       string // spec.delivery of the Trigger, YAML ({{dls}} is the dead-letter sink)
	script         []response
	dlsScript      []response // nil: no dead-letter sink
	closed         bool       // the subscriber's port is closed: transport errors
	concurrency    int
	ackWait        time.Duration
	events         int

	wantAttempts int             // attempts at the subscriber
	wantSpacing  []time.Duration // between consecutive attempts
	wantResult   result
	wantCode     int // knativeerrorcode at the dead-letter sink
	check        func(t *testing.T, r *run)
}

type run struct {
	h    *harness
	sub  *subscriber
	dls  *subscriber
	d    *triggers.Dispatcher
	sent []cloudevents.Event
}

func TestConformance(t *testing.T) {
	cases := []conformanceCase{
		{
			name:         "a 2xx answer is a delivery: one attempt, then ack",
			script:       []response{{status: 202}},
			wantAttempts: 1, wantResult: delivered,
		},
		{
			name:         "5xx is retried spec.delivery.retry times, then dead-lettered",
			delivery:     "retry: 2\nbackoffPolicy: linear\nbackoffDelay: PT0.1S\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 500, body: "kaput"}},
			dlsScript:    []response{{status: 202}},
			wantAttempts: 3, wantSpacing: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond},
			wantResult: deadLettered, wantCode: 500,
		},
		{name: "404 is retried (a pod may be becoming ready)", delivery: "retry: 1\nbackoffDelay: PT0.1S\nbackoffPolicy: linear", script: []response{{status: 404}, {status: 200}}, wantAttempts: 2, wantResult: delivered},
		{name: "408 is retried", delivery: "retry: 1\nbackoffDelay: PT0.1S\nbackoffPolicy: linear", script: []response{{status: 408}, {status: 200}}, wantAttempts: 2, wantResult: delivered},
		{name: "409 is retried", delivery: "retry: 1\nbackoffDelay: PT0.1S\nbackoffPolicy: linear", script: []response{{status: 409}, {status: 200}}, wantAttempts: 2, wantResult: delivered},
		{name: "429 is retried", delivery: "retry: 1\nbackoffDelay: PT0.1S\nbackoffPolicy: linear", script: []response{{status: 429}, {status: 200}}, wantAttempts: 2, wantResult: delivered},
		{name: "503 is retried", delivery: "retry: 1\nbackoffDelay: PT0.1S\nbackoffPolicy: linear", script: []response{{status: 503}, {status: 200}}, wantAttempts: 2, wantResult: delivered},
		{
			name:         "400 is not retried: dead-lettered at once",
			delivery:     "retry: 5\nbackoffDelay: PT0.1S\nbackoffPolicy: linear\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 400, body: "bad order"}},
			dlsScript:    []response{{status: 200}},
			wantAttempts: 1, wantResult: deadLettered, wantCode: 400,
		},
		{
			name:         "403 is not retried: dead-lettered at once",
			delivery:     "retry: 5\nbackoffDelay: PT0.1S\nbackoffPolicy: linear\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 403}},
			dlsScript:    []response{{status: 200}},
			wantAttempts: 1, wantResult: deadLettered, wantCode: 403,
		},
		{
			name:         "422 without a dead-letter sink: terminated and counted",
			delivery:     "retry: 5\nbackoffDelay: PT0.1S\nbackoffPolicy: linear",
			script:       []response{{status: 422}},
			wantAttempts: 1, wantResult: terminated,
			check: func(t *testing.T, r *run) {
				if got := r.d.Stats().Drops()["no_dead_letter_sink"]; got != 1 {
					t.Errorf("drops %v, want no_dead_letter_sink 1", r.d.Stats().Drops())
				}
			},
		},
		{
			name:         "retries used up without a dead-letter sink: terminated and counted",
			delivery:     "retry: 1\nbackoffDelay: PT0.1S\nbackoffPolicy: linear",
			script:       []response{{status: 500}},
			wantAttempts: 2, wantResult: terminated,
		},
		{
			name:       "a transport error is retried, then dead-lettered with code 500",
			delivery:   "retry: 2\nbackoffDelay: PT0.1S\nbackoffPolicy: linear\ndeadLetterSink: {uri: '{{dls}}'}",
			closed:     true,
			dlsScript:  []response{{status: 200}},
			wantResult: deadLettered, wantCode: 500,
			check: func(t *testing.T, r *run) {
				if got := r.d.Stats().Retried.Load(); got != 2 {
					t.Errorf("retried %d times, want 2", got)
				}
				data, _ := r.dls.got()[0].event.Extensions()["knativeerrordata"].(string)
				body, _ := base64.StdEncoding.DecodeString(data)
				if !strings.Contains(string(body), "dispatch error") {
					t.Errorf("knativeerrordata %q does not carry the transport error", body)
				}
			},
		},
		{
			name:         "an attempt longer than spec.delivery.timeout fails and is retried",
			delivery:     "retry: 1\ntimeout: PT0.2S\nbackoffDelay: PT0.1S\nbackoffPolicy: linear",
			script:       []response{{status: 200, delay: 2 * time.Second}, {status: 200}},
			wantAttempts: 2, wantResult: delivered,
			wantSpacing: []time.Duration{300 * time.Millisecond},
		},
		{
			name:         "linear backoff: the n-th retry waits n × backoffDelay",
			delivery:     "retry: 3\nbackoffPolicy: linear\nbackoffDelay: PT0.1S",
			script:       []response{{status: 500}},
			wantAttempts: 4, wantSpacing: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond},
			wantResult: terminated,
		},
		{
			name:         "exponential backoff: the n-th retry waits 2^n × backoffDelay",
			delivery:     "retry: 3\nbackoffPolicy: exponential\nbackoffDelay: PT0.1S",
			script:       []response{{status: 500}},
			wantAttempts: 4, wantSpacing: []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond},
			wantResult: terminated,
		},
		{
			name:         "Retry-After on 429 is honoured when retryAfterMax allows it",
			delivery:     "retry: 1\nbackoffPolicy: linear\nbackoffDelay: PT0.1S\nretryAfterMax: PT5S",
			script:       []response{{status: 429, header: map[string]string{"Retry-After": "1"}}, {status: 200}},
			wantAttempts: 2, wantSpacing: []time.Duration{time.Second}, wantResult: delivered,
		},
		{
			name:         "Retry-After on 503 is capped at retryAfterMax",
			delivery:     "retry: 1\nbackoffPolicy: linear\nbackoffDelay: PT0.1S\nretryAfterMax: PT0.3S",
			script:       []response{{status: 503, header: map[string]string{"Retry-After": "30"}}, {status: 200}},
			wantAttempts: 2, wantSpacing: []time.Duration{300 * time.Millisecond}, wantResult: delivered,
		},
		{
			name:         "Retry-After is ignored without retryAfterMax (Knative's opt-in)",
			delivery:     "retry: 1\nbackoffPolicy: linear\nbackoffDelay: PT0.1S",
			script:       []response{{status: 429, header: map[string]string{"Retry-After": "30"}}, {status: 200}},
			wantAttempts: 2, wantSpacing: []time.Duration{100 * time.Millisecond}, wantResult: delivered,
		},
		{
			name:           "the Trigger's spec.delivery overrides the Broker's",
			brokerDelivery: "delivery:\n  retry: 0",
			delivery:       "retry: 2\nbackoffPolicy: linear\nbackoffDelay: PT0.1S",
			script:         []response{{status: 500}},
			wantAttempts:   3, wantResult: terminated,
		},
		{
			name:           "without its own spec.delivery a Trigger follows the Broker's",
			brokerDelivery: "delivery:\n  retry: 1\n  backoffPolicy: linear\n  backoffDelay: PT0.1S\n  deadLetterSink: {uri: '{{dls}}'}",
			script:         []response{{status: 500}},
			dlsScript:      []response{{status: 200}},
			wantAttempts:   2, wantResult: deadLettered, wantCode: 500,
		},
		{
			name:         "the dead-letter sink gets the original event with knativeerrordest, knativeerrorcode and knativeerrordata",
			delivery:     "retry: 0\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 500, body: "the espresso machine is on fire"}},
			dlsScript:    []response{{status: 200}},
			wantAttempts: 1, wantResult: deadLettered, wantCode: 500,
			check: func(t *testing.T, r *run) {
				got := r.dls.got()[0].event
				want := r.sent[0]
				if got.ID() != want.ID() || got.Source() != want.Source() || got.Type() != want.Type() || string(got.Data()) != string(want.Data()) {
					t.Errorf("dead letter %v is not the original event %v", got, want)
				}
				ext := got.Extensions()
				if dest, _ := ext["knativeerrordest"].(string); dest != r.sub.URL && dest != r.sub.URL+"/" {
					t.Errorf("knativeerrordest = %v, want %s", ext["knativeerrordest"], r.sub.URL)
				}
				if data, _ := ext["knativeerrordata"].(string); data != base64.StdEncoding.EncodeToString([]byte("the espresso machine is on fire")) {
					t.Errorf("knativeerrordata = %q", data)
				}
				if _, ok := ext[kbroker.TTLAttribute]; ok {
					t.Errorf("the dead letter carries the broker's %s", kbroker.TTLAttribute)
				}
			},
		},
		{
			name:         "knativeerrordata is the base64 body capped at 1024 characters",
			delivery:     "retry: 0\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 500, body: strings.Repeat("0123456789", 200)}},
			dlsScript:    []response{{status: 200}},
			wantAttempts: 1, wantResult: deadLettered, wantCode: 500,
			check: func(t *testing.T, r *run) {
				data, _ := r.dls.got()[0].event.Extensions()["knativeerrordata"].(string)
				full := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("0123456789", 200)))
				if len(data) != 1024 || data != full[:1024] {
					t.Errorf("knativeerrordata has %d characters, want the first 1024 of the encoded body", len(data))
				}
			},
		},
		{
			name:       "the event is acked only once the dead-letter sink accepted it",
			delivery:   "retry: 0\nbackoffPolicy: linear\nbackoffDelay: PT0.1S\ndeadLetterSink: {uri: '{{dls}}'}",
			script:     []response{{status: 500}},
			dlsScript:  []response{{status: 503}, {status: 503}, {status: 200}},
			wantResult: deadLettered, wantCode: 500,
			check: func(t *testing.T, r *run) {
				if n := len(r.dls.got()); n != 3 {
					t.Errorf("dead-letter sink got %d attempts, want 3 (two refused, one accepted)", n)
				}
			},
		},
		{
			name:         "a refused dead-letter send is retried at the sink, not at the subscriber",
			delivery:     "retry: 1\nbackoffPolicy: linear\nbackoffDelay: PT0.1S\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 500}},
			dlsScript:    []response{{status: 503}, {status: 500}, {status: 200}},
			wantAttempts: 2, wantResult: deadLettered, wantCode: 500,
			check: func(t *testing.T, r *run) {
				dead := r.dls.got()
				if len(dead) != 3 {
					t.Fatalf("dead-letter sink got %d attempts, want 3 (two refused, one accepted)", len(dead))
				}
				for i, a := range dead {
					if a.event.ID() != r.sent[0].ID() || fmt.Sprint(a.event.Extensions()["knativeerrorcode"]) != "500" {
						t.Errorf("dead-letter attempt %d: %s with knativeerrorcode %v", i+1, a.event.ID(), a.event.Extensions()["knativeerrorcode"])
					}
				}
			},
		},
		{
			name:         "a 202 answer is not a reply: its body is ignored",
			filter:       "attributes: {type: com.example.order}",
			script:       []response{{status: 202, reply: "com.example.reply"}},
			wantAttempts: 1, wantResult: delivered,
			check: func(t *testing.T, r *run) {
				if n := len(r.h.stored()); n != 1 {
					t.Errorf("stream holds %d events, want only the original", n)
				}
				if got := r.d.Stats().Replies.Load(); got != 0 {
					t.Errorf("replies = %d, want 0", got)
				}
			},
		},
		{
			name:         "a 2xx with a CloudEvent body is a reply, stored in the broker before the ack",
			filter:       "attributes: {type: com.example.order}",
			script:       []response{{status: 200, reply: "com.example.reply"}},
			wantAttempts: 1, wantResult: delivered,
			check: func(t *testing.T, r *run) {
				stored := r.h.stored()
				if len(stored) != 2 || stored[1].Type() != "com.example.reply" {
					t.Fatalf("stream holds %d events, want the original and its reply", len(stored))
				}
				if ttl, err := kbroker.GetTTL(stored[1].Context); err != nil || ttl != broker.DefaultTTL-1 {
					t.Errorf("reply knativebrokerttl = %d (%v), want %d", ttl, err, broker.DefaultTTL-1)
				}
				if _, ok := r.sub.got()[0].event.Extensions()[kbroker.TTLAttribute]; ok {
					t.Errorf("the subscriber was shown the broker's %s", kbroker.TTLAttribute)
				}
				if got := r.d.Stats().Replies.Load(); got != 1 {
					t.Errorf("replies = %d", got)
				}
			},
		},
		{
			name:         "a 2xx with an empty body is a delivery without a reply",
			script:       []response{{status: 200}},
			wantAttempts: 1, wantResult: delivered,
			check: func(t *testing.T, r *run) {
				if n := len(r.h.stored()); n != 1 {
					t.Errorf("stream holds %d events, want 1", n)
				}
			},
		},
		{
			name:         "a 2xx whose body is not a CloudEvent fails as 502: retried, then dead-lettered",
			delivery:     "retry: 1\nbackoffPolicy: linear\nbackoffDelay: PT0.1S\ndeadLetterSink: {uri: '{{dls}}'}",
			script:       []response{{status: 200, body: "thanks!", header: map[string]string{"Content-Type": "text/plain"}}},
			dlsScript:    []response{{status: 200}},
			wantAttempts: 2, wantResult: deadLettered, wantCode: 502,
		},
		{
			name:         "spec.delivery.format json delivers in structured mode",
			delivery:     "format: json",
			script:       []response{{status: 200}},
			wantAttempts: 1, wantResult: delivered,
			check: func(t *testing.T, r *run) {
				if ct := r.sub.got()[0].header.Get("Content-Type"); !strings.HasPrefix(ct, "application/cloudevents+json") {
					t.Errorf("Content-Type %q, want structured mode", ct)
				}
			},
		},
		{
			name:         "binary mode by default, with Prefer: reply",
			script:       []response{{status: 200}},
			wantAttempts: 1, wantResult: delivered,
			check: func(t *testing.T, r *run) {
				h := r.sub.got()[0].header
				if h.Get("Ce-Id") != r.sent[0].ID() || h.Get("Prefer") != "reply" {
					t.Errorf("headers %v: want binary mode and Prefer: reply", h)
				}
			},
		},
		{
			name:         "a Trigger delivers up to its concurrency at once, never more",
			script:       []response{{status: 200, delay: 300 * time.Millisecond}},
			concurrency:  4,
			events:       12,
			wantAttempts: 12, wantResult: delivered,
			check: func(t *testing.T, r *run) {
				if p := r.sub.peak(); p != 4 {
					t.Errorf("peak concurrency %d, want 4", p)
				}
			},
		},
		{
			name:         "in-progress acks keep a slow delivery from being redelivered past AckWait",
			script:       []response{{status: 200, delay: 2500 * time.Millisecond}},
			ackWait:      time.Second,
			delivery:     "timeout: PT10S",
			wantAttempts: 1, wantResult: delivered,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCase(t, tc)
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

func runCase(t *testing.T, tc conformanceCase) *run {
	h := newHarness(t)
	r := &run{h: h, sub: newSubscriber(t, tc.script...)}
	if tc.closed {
		r.sub.Close()
	}
	delivery := tc.delivery
	brokerDelivery := tc.brokerDelivery
	if tc.dlsScript != nil {
		r.dls = newSubscriber(t, tc.dlsScript...)
		delivery = strings.ReplaceAll(delivery, "{{dls}}", r.dls.URL)
		brokerDelivery = strings.ReplaceAll(brokerDelivery, "{{dls}}", r.dls.URL)
	}
	trig := fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n", r.sub.URL)
	if delivery != "" {
		trig += "  delivery:\n" + indent(delivery, "    ") + "\n"
	}
	if tc.filter != "" {
		trig += "  filter:\n" + indent(tc.filter, "    ") + "\n"
	}
	tr, br := h.manifests(brokerDelivery, trig)
	cfg := triggers.Config{
		Trigger:     tr,
		Delivery:    triggers.EffectiveDelivery(tr, br),
		Subscriber:  mustURL(t, r.sub.URL),
		Concurrency: tc.concurrency,
		AckWait:     tc.ackWait,
	}
	if r.dls != nil {
		cfg.DeadLetter = mustURL(t, r.dls.URL)
	}
	r.d = h.run(cfg, nil)

	n := max(tc.events, 1)
	for i := range n {
		ev := newEvent(fmt.Sprintf("e-%d", i), "com.example.order")
		r.sent = append(r.sent, ev)
		h.publish(ev)
	}

	var attempts []attempt
	if tc.wantAttempts > 0 {
		attempts = r.sub.waitAttempts(t, tc.wantAttempts, 20*time.Second)
	}
	if r.dls != nil && tc.wantResult == deadLettered {
		r.dls.waitAttempts(t, 1, 20*time.Second)
	}
	h.settled(r.d, 20*time.Second)
	waitResult(t, r.d, tc.wantResult, int64(n))

	if tc.wantAttempts > 0 {
		// Nothing more may come once the event is settled.
		if got := len(r.sub.got()); got != tc.wantAttempts {
			t.Fatalf("%d attempts, want %d", got, tc.wantAttempts)
		}
		for i, want := range tc.wantSpacing {
			gap := attempts[i+1].at.Sub(attempts[i].at)
			if gap < want-early || gap > want+late {
				t.Errorf("attempt %d came %s after attempt %d, want %s (-%s/+%s)", i+2, gap.Round(time.Millisecond), i+1, want, early, late)
			}
		}
	}
	if tc.wantCode != 0 {
		dead := r.dls.got()
		last := dead[len(dead)-1].event
		if code := fmt.Sprint(last.Extensions()["knativeerrorcode"]); code != fmt.Sprint(tc.wantCode) {
			t.Errorf("knativeerrorcode = %s, want %d", code, tc.wantCode)
		}
	}
	if tc.wantResult != deadLettered && r.dls != nil && len(r.dls.got()) > 0 {
		t.Errorf("dead-letter sink got %d events", len(r.dls.got()))
	}
	return r
}

func waitResult(t *testing.T, d *triggers.Dispatcher, want result, n int64) {
	t.Helper()
	counter := map[result]*atomic.Int64{
		delivered:    &d.Stats().Delivered,
		deadLettered: &d.Stats().DeadLettered,
		terminated:   &d.Stats().Terminated,
	}
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("%s = %d", want, n), func() bool { return counter[want].Load() >= n })
	for res, c := range counter {
		wantN := int64(0)
		if res == want {
			wantN = n
		}
		if got := c.Load(); got != wantN {
			t.Errorf("%s = %d, want %d", res, got, wantN)
		}
	}
}

func mustURL(t testing.TB, raw string) triggers.URL {
	t.Helper()
	u, err := triggers.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestReplyThatCannotBeStoredIsRetried: if storing the reply fails, the
// delivery failed and the original event is delivered again.
func TestReplyThatCannotBeStoredIsRetried(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t, response{status: 200, reply: "com.example.reply"})
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  filter: {attributes: {type: com.example.order}}\n  subscriber: {uri: '%s'}\n  delivery: {retry: 2, backoffPolicy: linear, backoffDelay: PT0.1S}\n", sub.URL))
	pub := &failingPublisher{next: h.store, fail: 1}
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}, pub)
	h.publish(newEvent("e-1", "com.example.order"))
	sub.waitAttempts(t, 2, 10*time.Second)
	h.settled(d, 10*time.Second)
	waitResult(t, d, delivered, 1)
	if got := len(sub.got()); got != 2 {
		t.Fatalf("%d attempts, want 2 (the first reply could not be stored)", got)
	}
	var replies int
	for _, e := range h.stored() {
		if e.Type() == "com.example.reply" {
			replies++
		}
	}
	if replies != 1 {
		t.Fatalf("%d replies stored, want 1", replies)
	}
}

// failingPublisher fails the first `fail` publishes, then stores for real.
type failingPublisher struct {
	next broker.Publisher
	fail int32
	n    atomic.Int32
}

func (p *failingPublisher) Publish(ctx context.Context, r broker.Ref, e *cloudevents.Event) (broker.Result, error) {
	if p.n.Add(1) <= p.fail {
		return broker.Result{}, errors.New("injected: stream unavailable")
	}
	return p.next.Publish(ctx, r, e)
}

// TestTTLStopsAReplyLoop: a subscriber that answers every event with a new
// one is cut off after knativebrokerttl passes through the broker.
func TestTTLStopsAReplyLoop(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t, response{status: 200, reply: "com.example.order"})
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n", sub.URL))
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}, nil)
	h.publish(newEvent("loop", "com.example.order"))
	sub.waitAttempts(t, broker.DefaultTTL, 60*time.Second)
	h.settled(d, 10*time.Second)
	if got := len(sub.got()); got != broker.DefaultTTL {
		t.Fatalf("the loop ran %d times, want %d", got, broker.DefaultTTL)
	}
	if got := len(h.stored()); got != broker.DefaultTTL {
		t.Fatalf("%d events stored, want %d (the last reply is dropped)", got, broker.DefaultTTL)
	}
	// The dropped reply is not counted as stored: it is a drop with its
	// reason, and the event that caused it was delivered.
	st := d.Stats()
	if st.Replies.Load() != broker.DefaultTTL-1 || st.Drops()["reply_ttl_exhausted"] != 1 || st.Delivered.Load() != broker.DefaultTTL || st.Terminated.Load() != 0 {
		t.Fatalf("replies %d, drops %v, delivered %d, terminated %d; want %d, reply_ttl_exhausted 1, %d, 0",
			st.Replies.Load(), st.Drops(), st.Delivered.Load(), st.Terminated.Load(), broker.DefaultTTL-1, broker.DefaultTTL)
	}
}

// TestUndecodableMessageIsCountedAndLogged: a message in the stream that is
// no CloudEvent is terminated, logged with what its headers tell, and
// counted; the events around it are delivered.
func TestUndecodableMessageIsCountedAndLogged(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t)
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n", sub.URL))
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	client := &http.Client{}
	d, err := triggers.New(context.Background(), h.js, h.store, client, triggers.Config{Trigger: tr, Broker: h.ref, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()

	h.publish(newEvent("before", "com.example.order"))
	garbage := &nats.Msg{Subject: h.ref.TypeSubject("com.example.order"), Header: nats.Header{"ce-id": {"bad-1"}, "ce-source": {"/garbage"}}, Data: []byte("{not an event")}
	if _, err := h.js.PublishMsg(context.Background(), garbage); err != nil {
		t.Fatal(err)
	}
	h.publish(newEvent("after", "com.example.order"))
	sub.waitAttempts(t, 2, 10*time.Second)
	h.settled(d, 10*time.Second)
	if st := d.Stats(); st.Drops()["undecodable"] != 1 || st.Terminated.Load() != 1 || st.Delivered.Load() != 2 {
		t.Fatalf("drops %v, terminated %d, delivered %d", st.Drops(), st.Terminated.Load(), st.Delivered.Load())
	}
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if !strings.Contains(out, "drop=undecodable") || !strings.Contains(out, "id=bad-1") || !strings.Contains(out, "source=/garbage") {
		t.Fatalf("the drop is not logged with its id and source:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestDuplicateIsDeliveredOnce: the same source+id is stored and delivered once.
func TestDuplicateIsDeliveredOnce(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t)
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n", sub.URL))
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}, nil)
	ev := newEvent("twice", "com.example.order")
	h.publish(ev)
	h.publish(ev)
	other := newEvent("twice", "com.example.order")
	other.SetSource("/elsewhere")
	h.publish(other)
	sub.waitAttempts(t, 2, 10*time.Second)
	h.settled(d, 10*time.Second)
	if got := len(sub.got()); got != 2 {
		t.Fatalf("%d deliveries, want 2", got)
	}
}

// TestFilteredEventsAreAckedWithoutDelivery: a Trigger sees only what its
// filter passes, and the rest does not stay pending.
func TestFilteredEventsAreAckedWithoutDelivery(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t)
	tr, br := h.manifests("", fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: '{{broker}}'
  filters:
    - any:
        - exact: {type: com.example.order}
        - prefix: {type: com.example.refund.}
  subscriber: {uri: '%s'}
`, sub.URL))
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}, nil)
	for i, typ := range []string{"com.example.order", "com.example.other", "com.example.refund.full", "com.example.orders"} {
		h.publish(newEvent(fmt.Sprint(i), typ))
	}
	sub.waitAttempts(t, 2, 10*time.Second)
	h.settled(d, 10*time.Second)
	var types []string
	for _, a := range sub.got() {
		types = append(types, a.event.Type())
	}
	if strings.Join(types, ",") != "com.example.order,com.example.refund.full" {
		t.Fatalf("delivered %v", types)
	}
	if got := d.Stats().Filtered.Load(); got != 2 {
		t.Fatalf("filtered %d, want 2", got)
	}
}

var _ = http.StatusOK

// TestDeadLetterSinkThatRefusesForGood: a sink answering a status Knative
// does not retry (400) is not asked again and again: the event is
// terminated, logged and counted as dead_letter_refused, after one send.
func TestDeadLetterSinkThatRefusesForGood(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t, response{status: 500})
	dls := newSubscriber(t, response{status: 400})
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n  delivery: {retry: 0, deadLetterSink: {uri: '%s'}}\n", sub.URL, dls.URL))
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL), DeadLetter: mustURL(t, dls.URL)}, nil)
	h.publish(newEvent("refused", "com.example.order"))
	dls.waitAttempts(t, 1, 10*time.Second)
	h.settled(d, 10*time.Second)
	waitResult(t, d, terminated, 1)
	if got := d.Stats().Drops()["dead_letter_refused"]; got != 1 {
		t.Errorf("drops %v, want dead_letter_refused 1", d.Stats().Drops())
	}
	if n := len(dls.got()); n != 1 {
		t.Errorf("the refusing sink was asked %d times, want 1", n)
	}
	if n := len(sub.got()); n != 1 {
		t.Errorf("the subscriber was asked %d times, want 1", n)
	}
}

// TestStaleDeadLetterStateIsIgnored: the dead-letter state of an earlier
// event under the same consumer and stream sequence (a Broker and Trigger
// made again under the same names) does not send a new event's retry to
// the dead-letter sink.
func TestStaleDeadLetterStateIsIgnored(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t, response{status: 500}, response{status: 200})
	dls := newSubscriber(t)
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n  delivery: {retry: 1, backoffPolicy: linear, backoffDelay: PT0.1S, deadLetterSink: {uri: '%s'}}\n", sub.URL, dls.URL))
	kv, err := h.js.CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: triggers.DeadLetterBucket(h.ref)})
	if err != nil {
		t.Fatal(err)
	}
	stale := `{"dest":"http://old/","code":499,"data":"","tries":1,"event":"` + broker.MsgID("/old", "old") + `"}`
	if _, err := kv.Put(context.Background(), triggers.ConsumerName(tr)+".1", []byte(stale)); err != nil {
		t.Fatal(err)
	}
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL), DeadLetter: mustURL(t, dls.URL)}, nil)
	h.publish(newEvent("new", "com.example.order"))
	sub.waitAttempts(t, 2, 10*time.Second)
	h.settled(d, 10*time.Second)
	waitResult(t, d, delivered, 1)
	if n := len(dls.got()); n != 0 {
		t.Fatalf("the dead-letter sink got %d events: the stale state was taken for the new event's", n)
	}
}

// TestRunEndsWhenItsConsumerIsGone: a dispatcher whose durable consumer was
// deleted before its first pull says so and ends, like one whose consumer
// is deleted under a waiting pull, instead of pulling in vain; its owner
// (the runner, the fleet) then makes the consumer again.
func TestRunEndsWhenItsConsumerIsGone(t *testing.T) {
	h := newHarness(t)
	sub := newSubscriber(t)
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n", sub.URL))
	cfg := triggers.Config{Trigger: tr, Broker: h.ref, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}
	d, err := triggers.New(t.Context(), h.js, h.store, http.DefaultClient, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.js.DeleteConsumer(t.Context(), h.ref.StreamName(), triggers.ConsumerName(tr)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err = d.Run(ctx)
	if ctx.Err() != nil {
		t.Fatal("Run was still pulling for a deleted consumer after 30s")
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("Run ended with %v, want the consumer not found", err)
	}
}
