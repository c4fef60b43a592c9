package triggers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/nats-io/nats.go/jetstream"
	"knative.dev/eventing/pkg/kncloudevents/attributes"

	"github.com/koffeeshop/koffeeshop/broker"
)

// DeadLetterBucket is the JetStream key-value bucket in which the
// dispatchers of a Broker's Triggers remember the events that wait for
// their dead-letter sink: one per Broker, so its entries live as long as
// that Broker's stream keeps an event.
func DeadLetterBucket(b broker.Ref) string {
	return "DEAD_LETTERS_" + b.StreamName()
}

// failure is why a delivery failed for good: what the dead-letter sink is
// told in Knative's knativeerrordest, knativeerrorcode and knativeerrordata.
type failure struct {
	Dest string `json:"dest"`
	Code int    `json:"code"`
	// Data is the subscriber's response body, base64, at most
	// KnativeErrorDataExtensionMaxLength characters.
	Data string `json:"data"`
	// Tries counts the refused sends to the dead-letter sink.
	Tries int `json:"tries"`
	// Event is the event's broker.MsgID: a key outlives its event when a
	// Broker and Trigger are made again under the same names and the
	// stream's sequences start over, and must not match a new event.
	Event string `json:"event"`
}

func failureOf(out outcome) *failure {
	data := base64.StdEncoding.EncodeToString(out.body)
	if len(data) > attributes.KnativeErrorDataExtensionMaxLength {
		data = data[:attributes.KnativeErrorDataExtensionMaxLength]
	}
	f := &failure{Code: out.code, Data: data}
	if out.dest != nil {
		f.Dest = out.dest.String()
	}
	return f
}

// transformers add Knative's error extensions to the dead-lettered event.
func (f *failure) transformers() binding.Transformers {
	dest, err := url.Parse(f.Dest)
	if err != nil || dest == nil {
		dest = &url.URL{}
	}
	return attributes.KnativeErrorTransformers(*dest, f.Code, f.Data)
}

// deadLetters remembers, across redeliveries, the events whose delivery
// failed for good and whose dead-letter send was refused: their next
// delivery goes to the dead-letter sink again, not to the subscriber. The
// memory is keyed by consumer and stream sequence and lives in JetStream,
// so it survives a dispatcher's restart.
type deadLetters struct {
	kv jetstream.KeyValue
}

// openDeadLetters creates the bucket of Broker b, or binds to it, kept
// like the Broker's stream st: its entries expire with the stream's max
// age (the longest an event can wait), on the same storage and replicas.
func openDeadLetters(ctx context.Context, js jetstream.JetStream, b broker.Ref, st jetstream.StreamConfig) (*deadLetters, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      DeadLetterBucket(b),
		Description: "Events of Broker " + b.String() + " waiting for a Trigger's dead-letter sink",
		TTL:         st.MaxAge,
		Storage:     st.Storage,
		Replicas:    st.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("dead-letter bucket: %w", err)
	}
	return &deadLetters{kv: kv}, nil
}

func deadLetterKey(consumer string, seq uint64) string {
	return consumer + "." + strconv.FormatUint(seq, 10)
}

// get returns the failure remembered for key, or nil.
func (dl *deadLetters) get(ctx context.Context, key string) (*failure, error) {
	e, err := dl.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	f := &failure{}
	if err := json.Unmarshal(e.Value(), f); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return f, nil
}

func (dl *deadLetters) put(ctx context.Context, key string, f *failure) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if _, err := dl.kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("remember %s: %w", key, err)
	}
	return nil
}

func (dl *deadLetters) forget(ctx context.Context, key string) error {
	if err := dl.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget %s: %w", key, err)
	}
	return nil
}
