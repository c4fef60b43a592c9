package triggers

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"
)

// withDefaults fills the zero fields of cfg and returns its delivery Policy.
func (cfg Config) withDefaults() (Config, Policy, error) {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider()
	}
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = 5 * time.Minute
	}
	if cfg.AcquireTimeout <= 0 {
		cfg.AcquireTimeout = 2 * time.Minute
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	policy, err := NewPolicy(cfg.Delivery, cfg.DefaultTimeout)
	if err != nil {
		return cfg, Policy{}, fmt.Errorf("trigger %s: %w", triggerName(cfg.Trigger), err)
	}
	// A message is in our hands for at most one attempt, the reply publish
	// and the dead-letter send; in-progress acks extend it while we work.
	if cfg.AckWait <= 0 {
		cfg.AckWait = policy.Timeout + 30*time.Second
	}
	return cfg, policy, nil
}

// ConsumerConfig is the durable JetStream consumer that backs the Trigger
// of cfg: new events only, explicit acks, redelivered without limit (the
// dispatcher applies the DeliverySpec's retries), and the Trigger's exact
// type, if its filter pins one, selected server-side.
func ConsumerConfig(cfg Config) (jetstream.ConsumerConfig, error) {
	cfg, _, err := cfg.withDefaults()
	if err != nil {
		return jetstream.ConsumerConfig{}, err
	}
	t := cfg.Trigger
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(t),
		Description:   "Knative Trigger " + triggerName(t).String(),
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: max(1000, cfg.Concurrency*10),
		FilterSubject: filterSubject(cfg.Broker, t),
	}, nil
}

// EnsureConsumer creates the Trigger's durable consumer, or updates it to
// ConsumerConfig(cfg).
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.Consumer, error) {
	cc, err := ConsumerConfig(cfg)
	if err != nil {
		return nil, err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Broker.StreamName(), cc)
	if err != nil {
		return nil, fmt.Errorf("trigger %s: create consumer: %w", triggerName(cfg.Trigger), err)
	}
	return cons, nil
}
