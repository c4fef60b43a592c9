package triggers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go/jetstream"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/feature"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/manifest"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// natsURL is the JetStream server shared by the tests of this package; each
// test gets a Broker (a stream) of its own.
var natsURL string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "triggers-js-")
	if err != nil {
		panic(err)
	}
	srv, err := testkit.RunNATS(dir)
	if err != nil {
		panic(err)
	}
	natsURL = srv.ClientURL()
	code := m.Run()
	srv.Shutdown()
	os.RemoveAll(dir)
	os.Exit(code)
}

var brokerSeq atomic.Int64

type harness struct {
	t     testing.TB
	js    jetstream.JetStream
	store *broker.Store
	ref   broker.Ref
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	js := testkit.Connect(t, natsURL)
	ref := broker.Ref{Namespace: "default", Name: fmt.Sprintf("b%d", brokerSeq.Add(1))}
	if _, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := broker.NewStore(js.Conn(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, js: js, store: store, ref: ref}
}

// manifests parses a Broker and a Trigger with Knative's types and
// validation; {{broker}} names this harness's Broker. retryAfterMax needs
// the delivery-retryafter feature, enabled here as a cluster would.
func (h *harness) manifests(brokerDelivery, triggerYAML string) (*eventingv1.Trigger, *eventingv1.Broker) {
	h.t.Helper()
	doc := fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: %s
  namespace: %s
  annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}
spec:
%s
---
%s`, h.ref.Name, h.ref.Namespace, indent(brokerDelivery, "  "), strings.ReplaceAll(triggerYAML, "{{broker}}", h.ref.Name))
	flags, err := feature.NewFlagsConfigFromMap(map[string]string{feature.DeliveryRetryAfter: "enabled"})
	if err != nil {
		h.t.Fatal(err)
	}
	set, err := manifest.Parse(feature.ToContext(context.Background(), flags), strings.NewReader(doc), h.t.Name())
	if err != nil {
		h.t.Fatalf("manifests do not validate: %v\n%s", err, doc)
	}
	return set.Triggers[0], set.Brokers[0]
}

func indent(s, pre string) string {
	if strings.TrimSpace(s) == "" {
		return pre + "{}"
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = pre + l
	}
	return strings.Join(lines, "\n")
}

// run starts a Dispatcher and stops it when the test ends.
func (h *harness) run(cfg triggers.Config, pub broker.Publisher) *triggers.Dispatcher {
	h.t.Helper()
	cfg.Broker = h.ref
	if pub == nil {
		pub = h.store
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
	d, err := triggers.New(context.Background(), h.js, pub, client, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("dispatcher: %v", err)
		}
	})
	return d
}

func (h *harness) publish(ev cloudevents.Event) {
	h.t.Helper()
	if _, err := h.store.Publish(context.Background(), h.ref, &ev); err != nil {
		h.t.Fatal(err)
	}
}

// stored returns every event in the Broker's stream, in order.
func (h *harness) stored() []cloudevents.Event {
	h.t.Helper()
	var out []cloudevents.Event
	for _, m := range h.storedMsgs() {
		ev, err := broker.Decode(m.Header, m.Data)
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// storedMsgs returns every message in the Broker's stream, in order.
func (h *harness) storedMsgs() []*jetstream.RawStreamMsg {
	h.t.Helper()
	st, err := h.js.Stream(context.Background(), h.ref.StreamName())
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// settled waits until the consumer has been handed every event stored on
// its subject, has nothing pending or unacknowledged, and the dispatcher
// has no delivery under way: from then on no attempt can come. The
// consumer's pending count alone is not enough: the server acknowledges a
// publish before it tells the consumers, so under load the count can read
// 0 for an event just stored.
func (h *harness) settled(d *triggers.Dispatcher, timeout time.Duration) {
	h.t.Helper()
	testkit.Eventually(h.t, timeout, "consumer settled", func() error {
		ctx := context.Background()
		info, err := d.Consumer().Info(ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		last, err := h.lastStored(ctx, info.Config)
		if err != nil {
			h.t.Fatal(err)
		}
		if n := d.Stats().InFlight.Load(); info.Delivered.Stream < last || info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 || n != 0 {
			return fmt.Errorf("handed up to %d of %d, pending %d, ack pending %d, redelivered %d, deliveries under way %d",
				info.Delivered.Stream, last, info.NumPending, info.NumAckPending, info.NumRedelivered, n)
		}
		return nil
	})
}

// lastStored is the stream sequence of the last event stored on the
// subjects the consumer c reads (0 for none).
func (h *harness) lastStored(ctx context.Context, c jetstream.ConsumerConfig) (uint64, error) {
	stream, err := h.js.Stream(ctx, h.ref.StreamName())
	if err != nil {
		return 0, err
	}
	subjects := c.FilterSubjects
	if c.FilterSubject != "" {
		subjects = append(subjects, c.FilterSubject)
	}
	if len(subjects) == 0 {
		info, err := stream.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.State.LastSeq, nil
	}
	var last uint64
	for _, subject := range subjects {
		msg, err := stream.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		last = max(last, msg.Sequence)
	}
	return last, nil
}

func newEvent(id, typ string) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource("/conformance")
	ev.SetType(typ)
	_ = ev.SetData(cloudevents.ApplicationJSON, map[string]string{"id": id})
	return ev
}

// response is one scripted answer of a subscriber.
type response struct {
	status int
	header map[string]string
	body   string
	delay  time.Duration
	// reply answers with a new event of this type (binary mode).
	reply string
}

type attempt struct {
	at     time.Time
	event  cloudevents.Event
	header http.Header
}

// subscriber answers its script in order, the last entry from then on,
// and records every attempt.
type subscriber struct {
	*httptest.Server
	script []response

	mu          sync.Mutex
	attempts    []attempt
	inFlight    int
	maxInFlight int
}

func newSubscriber(t *testing.T, script ...response) *subscriber {
	s := &subscriber{script: script}
	if len(s.script) == 0 {
		s.script = []response{{status: http.StatusAccepted}}
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *subscriber) serve(w http.ResponseWriter, r *http.Request) {
	ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		http.Error(w, "subscriber got no CloudEvent: "+err.Error(), http.StatusTeapot)
		return
	}
	s.mu.Lock()
	n := len(s.attempts)
	s.attempts = append(s.attempts, attempt{at: time.Now(), event: *ev, header: r.Header.Clone()})
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	resp := s.script[min(n, len(s.script)-1)]
	if resp.delay > 0 {
		select {
		case <-time.After(resp.delay):
		case <-r.Context().Done():
			return
		}
	}
	for k, v := range resp.header {
		w.Header().Set(k, v)
	}
	if resp.reply != "" {
		rep := cloudevents.NewEvent()
		rep.SetID(fmt.Sprintf("reply-%d-%s", n, ev.ID()))
		rep.SetSource("/conformance/subscriber")
		rep.SetType(resp.reply)
		_ = rep.SetData(cloudevents.ApplicationJSON, map[string]int{"attempt": n})
		if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(&rep), resp.status, w); err != nil {
			panic(err)
		}
		return
	}
	w.WriteHeader(resp.status)
	_, _ = io.WriteString(w, resp.body)
}

func (s *subscriber) got() []attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]attempt(nil), s.attempts...)
}

func (s *subscriber) peak() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInFlight
}

// waitAttempts waits for at least n attempts.
func (s *subscriber) waitAttempts(t *testing.T, n int, timeout time.Duration) []attempt {
	t.Helper()
	var got []attempt
	testkit.Eventually(t, timeout, "attempts", func() error {
		if got = s.got(); len(got) < n {
			return fmt.Errorf("%d of %d", len(got), n)
		}
		return nil
	})
	return got
}
