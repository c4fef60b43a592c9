package board

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
)

// History is how many of the shop's most recent events the board reads
// back when it starts: enough for its MaxOrders orders, each of which
// takes about five events.
const History = 6 * MaxOrders

// Follow moves the board's orders on with the Broker's events until ctx is
// done, reading them from the Broker's stream in this process with an
// ordered consumer of the shop's event types: no Trigger, no HTTP delivery
// and no acks, and the board it builds after a restart is the one before,
// rebuilt from the last History events.
func (b *Board) Follow(ctx context.Context, js jetstream.JetStream, ref broker.Ref) error {
	st, err := js.Stream(ctx, ref.StreamName())
	if err != nil {
		return fmt.Errorf("board: stream of %s: %w", ref, err)
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	for typ := range stageOf {
		cfg.FilterSubjects = append(cfg.FilterSubjects, ref.TypeSubject(typ))
	}
	slices.Sort(cfg.FilterSubjects)
	if last := st.CachedInfo().State.LastSeq; last > History {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = last - History + 1
	}
	cons, err := js.OrderedConsumer(ctx, ref.StreamName(), cfg)
	if err != nil {
		return fmt.Errorf("board: follow %s: %w", ref, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("board: follow %s: %w", ref, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return fmt.Errorf("board: follow %s: %w", ref, err)
		case err != nil:
			b.d.Log.Warn("board: reading the stream", "err", err)
			continue
		}
		ev, err := broker.Decode(msg.Headers(), msg.Data())
		if err != nil {
			continue // the dispatchers count and log an undecodable event
		}
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		b.orders.Apply(ev, meta.Timestamp)
	}
}
