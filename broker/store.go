package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	kbroker "knative.dev/eventing/pkg/broker"

	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// DefaultTTL is the number of times an event may pass through a Broker
// (as a reply to a reply ...) before it is dropped: Knative's loop guard.
const DefaultTTL = 255

// Publisher stores events in a Broker. Both the HTTP ingress and the reply
// path of the trigger dispatchers publish through it.
type Publisher interface {
	Publish(ctx context.Context, r Ref, e *cloudevents.Event) (Result, error)
}

// Result says what became of a stored event.
type Result struct {
	// Duplicate is true when the stream already held this source+id.
	Duplicate bool
	// Sequence is the event's stream sequence.
	Sequence uint64
}

// ErrTTLExhausted is wrapped by Publish's error when Knative's loop guard
// drops an event: its knativebrokerttl is used up. Nothing was stored.
var ErrTTLExhausted = errors.New("knativebrokerttl is exhausted (an event loop?)")

// DefaultPublishTimeout bounds the wait for JetStream's acknowledgement.
const DefaultPublishTimeout = 5 * time.Second

// Store publishes events to the JetStream streams of the Brokers.
type Store struct {
	// js fails a publish whose acknowledgement takes longer than the
	// Store's timeout (and forgets it).
	js  jetstream.JetStream
	now func() time.Time
}

// maxPendingPublishes bounds the publishes awaiting their acknowledgement;
// past it a publish waits briefly, then fails (the ingress answers 503).
const maxPendingPublishes = 1 << 16

// NewStore returns a Store that publishes over nc and waits at most
// timeout (DefaultPublishTimeout when 0) for each acknowledgement.
func NewStore(nc *nats.Conn, timeout time.Duration) (*Store, error) {
	if nc == nil {
		return nil, errors.New("new store: no NATS connection")
	}
	if timeout <= 0 {
		timeout = DefaultPublishTimeout
	}
	// A JetStream context of its own, whose asynchronous publishes time
	// out: the connection's other users keep their options.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(timeout),
		jetstream.WithPublishAsyncMaxPending(maxPendingPublishes))
	if err != nil {
		return nil, fmt.Errorf("new store: %w", err)
	}
	return &Store{js: js, now: time.Now}, nil
}

// Publish stamps knativearrivaltime, applies the knativebrokerttl loop guard
// (set to 255 when absent, else decremented; an event at 0 is refused with
// ErrTTLExhausted), and stores the event. It returns only once JetStream has acknowledged the
// write, so a nil error means the event is on disk. Like Knative's
// defaulter, it writes the new TTL and arrival time into e's context.
//
// The publish is asynchronous: the connection carries the publishes of
// every caller back to back and the acknowledgements come back on one
// subscription, instead of a request and a reply inbox per event; each
// caller still waits for its own acknowledgement.
func (s *Store) Publish(ctx context.Context, r Ref, e *cloudevents.Event) (Result, error) {
	ttl := nextTTL(e.Context)
	if ttl <= 0 {
		return Result{}, fmt.Errorf("event %s from %s not stored in %s: %w", e.ID(), e.Source(), r, ErrTTLExhausted)
	}
	_ = kbroker.SetTTL(e.Context, ttl)
	e.SetExtension(kbroker.EventArrivalTime, cloudevents.Timestamp{Time: s.now().UTC()})
	// An event created in a traced hop says so; the stored message
	// carries the context of the hop that stored it, which the delivery
	// continues.
	tracing.OnEvent(ctx, e)

	typ := e.Type()
	// The headers jetstream.WithMsgID and WithExpectStream would set,
	// written directly: the publish then takes the client's fast path.
	msg := &nats.Msg{Subject: r.TypeSubject(typ), Header: nats.Header{
		jetstream.MsgIDHeader:          {MsgID(e.Source(), e.ID())},
		jetstream.ExpectedStreamHeader: {r.StreamName()},
	}}
	if err := encodeStored(ctx, e, msg); err != nil {
		return Result{}, err
	}
	if trace.SpanContextFromContext(ctx).IsSampled() && !tracing.SameAsEvent(ctx, e) {
		// The delivery continues the hop that stored the event; when that
		// is the event's own context, its extension says it already, and
		// when the trace is not sampled, the extension's context decides
		// the same: nothing is recorded.
		tracing.ToCarrier(ctx, tracing.Headers(msg.Header))
	}
	paf, err := s.js.PublishMsgAsync(msg)
	if err != nil {
		return Result{}, fmt.Errorf("store event %s in %s: %w", e.ID(), r.StreamName(), err)
	}
	select {
	case ack := <-paf.Ok():
		return Result{Duplicate: ack.Duplicate, Sequence: ack.Sequence}, nil
	case err = <-paf.Err():
	case <-ctx.Done():
		err = ctx.Err()
	}
	return Result{}, fmt.Errorf("store event %s in %s: %w", e.ID(), r.StreamName(), err)
}

// nextTTL is the knativebrokerttl an event gets on its way into a Broker,
// by the rules of Knative's TTLDefaulter: DefaultTTL when it has none or
// one that is not an integer, else one less, never below 0.
func nextTTL(ec cloudevents.EventContext) int32 {
	var raw any
	if v1, ok := ec.(*event.EventContextV1); ok {
		// The common case, without the error GetExtension builds for a
		// missing extension.
		raw = v1.Extensions[kbroker.TTLAttribute]
	} else {
		raw, _ = ec.GetExtension(kbroker.TTLAttribute)
	}
	if raw == nil {
		return DefaultTTL
	}
	ttl, err := types.ToInteger(raw)
	if err != nil {
		return DefaultTTL
	}
	return max(ttl-1, 0)
}
