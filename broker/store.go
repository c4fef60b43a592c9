package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	kbroker "knative.dev/eventing/pkg/broker"
)

// DefaultTTL is the number of times an event may pass through a Broker
// (as a reply to a reply ...) before it is dropped: Knative's loop guard.
const DefaultTTL = 255

// Publisher stores events in a Broker. Both the HTTP ingress and the reply
// path of the trigger dispatchers publish through it.
type Publisher interface {
	Publish(ctx context.Context, r Ref, e *cloudevents.Event) (Result, error)
}

// Result says what became of a published event.
type Result struct {
	// Stored is true when the event is in the stream (new or a duplicate).
	Stored bool
	// Duplicate is true when the stream already held this source+id.
	Duplicate bool
	// Sequence is the event's stream sequence.
	Sequence uint64
	// DroppedTTL is true when the event was dropped by the TTL loop guard.
	DroppedTTL bool
}

// DefaultPublishTimeout bounds the wait for JetStream's acknowledgement.
const DefaultPublishTimeout = 5 * time.Second

// Store publishes events to the JetStream streams of the Brokers.
type Store struct {
	js         jetstream.JetStream
	log        *slog.Logger
	timeout    time.Duration
	defaultTTL func(context.Context, cloudevents.Event) cloudevents.Event
	now        func() time.Time
}

// NewStore returns a Store that publishes through js and waits at most
// timeout (DefaultPublishTimeout when 0) for each acknowledgement.
func NewStore(js jetstream.JetStream, log *slog.Logger, timeout time.Duration) *Store {
	if timeout <= 0 {
		timeout = DefaultPublishTimeout
	}
	return &Store{
		js:         js,
		log:        log,
		timeout:    timeout,
		defaultTTL: kbroker.TTLDefaulter(zap.NewNop(), DefaultTTL),
		now:        time.Now,
	}
}

// Publish stamps knativearrivaltime, applies the knativebrokerttl loop guard
// (set to 255 when absent, else decremented; an event at 0 is dropped), and
// stores the event. It returns only once JetStream has acknowledged the
// write, so a nil error means the event is on disk.
func (s *Store) Publish(ctx context.Context, r Ref, e *cloudevents.Event) (Result, error) {
	ev := s.defaultTTL(ctx, *e)
	ttl, err := kbroker.GetTTL(ev.Context)
	if err != nil || ttl <= 0 {
		s.log.Warn("dropping event: knativebrokerttl exhausted",
			"broker", r.String(), "id", ev.ID(), "source", ev.Source(), "type", ev.Type())
		return Result{DroppedTTL: true}, nil
	}
	ev.SetExtension(kbroker.EventArrivalTime, cloudevents.Timestamp{Time: s.now().UTC()})

	body, err := ev.MarshalJSON()
	if err != nil {
		return Result{}, fmt.Errorf("encode event %s: %w", ev.ID(), err)
	}
	msg := &nats.Msg{Subject: r.TypeSubject(ev.Type()), Data: body, Header: nats.Header{}}
	msg.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON)
	msg.Header.Set("Ce-Type", ev.Type())
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ack, err := s.js.PublishMsg(ctx, msg,
		jetstream.WithMsgID(MsgID(ev.Source(), ev.ID())),
		jetstream.WithExpectStream(r.StreamName()))
	if err != nil {
		return Result{}, fmt.Errorf("store event %s in %s: %w", ev.ID(), r.StreamName(), err)
	}
	return Result{Stored: true, Duplicate: ack.Duplicate, Sequence: ack.Sequence}, nil
}

// Decode reads an event stored by Publish.
func Decode(data []byte) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	if err := e.UnmarshalJSON(data); err != nil {
		return e, fmt.Errorf("decode stored event: %w", err)
	}
	return e, nil
}
