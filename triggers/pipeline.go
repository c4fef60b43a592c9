package triggers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go/jetstream"
	kbroker "knative.dev/eventing/pkg/broker"

	"github.com/koffeeshop/koffeeshop/broker"
)

// A delivery is a chain of steps, each a middleware around the steps
// inside it, down to the send to the subscriber. A step sees the event on
// its way in and the verdict of the steps inside on its way out; the
// verdict of the whole chain is what JetStream is told (settle).

// handler takes a stored event one step on its way to the subscriber.
type handler func(ctx context.Context, dl *delivery) verdict

// middleware wraps a handler with one step of a delivery.
type middleware func(next handler) handler

// chain is h inside mws, the first outermost.
func chain(h handler, mws ...middleware) handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// pipeline is the chain a stored event goes through, outermost first.
// Without a dead-letter sink a delivery that failed for good is dropped
// within the attempt's span; with one, the dead-letter send is the span's
// sibling.
func (d *Dispatcher) pipeline() handler {
	steps := []middleware{d.recovered, d.metadata, d.filtered, d.keptAlive, d.traced}
	if d.dead != nil {
		steps = append(steps, d.deadLettered, d.attemptSpan)
	} else {
		steps = append(steps, d.attemptSpan, onFailure(d.dropUndelivered))
	}
	steps = append(steps, onFailure(d.retry), d.replied)
	return chain(d.send, steps...)
}

// handle delivers one stored event and settles its message.
func (d *Dispatcher) handle(ctx context.Context, msg jetstream.Msg) {
	d.stats.InFlight.Add(1)
	defer d.stats.InFlight.Add(-1)
	// The steps are function values, which a delivery escapes through to
	// the heap: deliveries are reused instead of made per event.
	dl, _ := d.deliveries.Get().(*delivery)
	if dl == nil {
		dl = new(delivery)
	}
	*dl = delivery{msg: msg, log: eventLog{base: d.log, stored: msg.Headers()}}
	d.settle(ctx, dl, d.deliver(ctx, dl))
	*dl = delivery{}
	d.deliveries.Put(dl)
}

// op is how a verdict settles the message with JetStream.
type op uint8

const (
	opAck    op = iota // done with it: delivered, filtered out or dead-lettered
	opNak              // deliver it again, after the verdict's delay
	opTerm             // never deliver it again
	opFailed           // the delivery failed; a step around decides
)

// verdict is what the steps of a delivery made of an event. The zero
// verdict acks it.
type verdict struct {
	op     op
	delay  time.Duration // opNak: how long JetStream waits to redeliver
	reason string        // opTerm: recorded in JetStream's advisory
	// outcome is what the attempt's span says of an opNak.
	outcome string
	// forget removes the event's dead-letter state once the message is
	// settled: after the ack, so that an ack that is lost brings the
	// event back to the dead-letter sink, not to the subscriber.
	forget bool
}

var (
	ack             = verdict{}
	failed          = verdict{op: opFailed}
	handedBack      = verdict{op: opNak, outcome: outcomeHandedBack}
	termUndecodable = verdict{op: opTerm, reason: "undecodable event"}
)

// spanOutcome is what the span of the attempt says of v.
func (v verdict) spanOutcome() string {
	switch v.op {
	case opAck:
		return outcomeDelivered
	case opNak:
		return v.outcome
	case opFailed:
		// Only the dead-letter step takes a failure on past the span.
		return outcomeDeadLetter
	}
	return outcomeDropped
}

// settle tells JetStream what became of the event.
func (d *Dispatcher) settle(ctx context.Context, dl *delivery, v verdict) {
	switch v.op {
	case opAck:
		d.ackErr(&dl.log, "ack", dl.msg.Ack())
	case opNak:
		if v.delay > 0 {
			d.ackErr(&dl.log, "nak", dl.msg.NakWithDelay(v.delay))
		} else {
			d.ackErr(&dl.log, "nak", dl.msg.Nak())
		}
	case opTerm:
		d.ackErr(&dl.log, "term", dl.msg.TermWithReason(v.reason))
	default:
		// pipeline settles every failure; one that gets here is a bug.
		dl.log.get().Error("delivery failed and no step settled it: event terminated", "err", dl.out.err)
		d.ackErr(&dl.log, "term", dl.msg.TermWithReason("unsettled failure"))
	}
	if v.forget {
		d.forgetDeadLetter(ctx, dl)
	}
}

// recovered terminates an event whose delivery panicked: a bug must not
// take the dispatcher down with every Trigger of the process, and the
// event stays in the stream for inspection.
func (d *Dispatcher) recovered(next handler) handler {
	return func(ctx context.Context, dl *delivery) (v verdict) {
		defer func() {
			if p := recover(); p != nil {
				d.drop(&dl.log, DropPanic, "delivery panicked, event terminated", "panic", p, "stack", string(debug.Stack()))
				v = verdict{op: opTerm, reason: "dispatcher panic"}
			}
		}()
		return next(ctx, dl)
	}
}

// metadata reads JetStream's metadata of the message: its sequence and
// how often it was delivered.
func (d *Dispatcher) metadata(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		meta, err := dl.msg.Metadata()
		if err != nil {
			d.drop(&dl.log, DropUndecodable, "message without metadata, terminated", "err", err)
			return verdict{op: opTerm, reason: "no metadata"}
		}
		dl.meta, dl.attempt = meta, int(meta.NumDelivered)
		dl.log.with("seq", meta.Sequence.Stream)
		return next(ctx, dl)
	}
}

// filtered acks an event the Trigger's filter does not pass, without a
// delivery.
func (d *Dispatcher) filtered(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		if err := d.filterOut(ctx, dl); err != nil {
			if errors.Is(err, errFiltered) {
				d.stats.Filtered.Add(1)
				return ack
			}
			d.drop(&dl.log, DropUndecodable, "undecodable stored event, terminated", "err", err)
			return termUndecodable
		}
		dl.log.with("attempt", dl.attempt)
		return next(ctx, dl)
	}
}

// keptAlive keeps JetStream from redelivering the event while the steps
// inside work on it.
func (d *Dispatcher) keptAlive(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		stop := keepAlive(dl.msg, d.cfg.AckWait, d.log)
		defer stop()
		return next(ctx, dl)
	}
}

// traced continues the trace the stored message carries.
func (d *Dispatcher) traced(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		return next(d.traceParent(ctx, dl.msg.Headers(), dl.meta, dl.attempt), dl)
	}
}

// deadLettered sends the event to the Trigger's dead-letter sink when its
// delivery failed for good, and a redelivered event whose sink refused it
// before straight back there, not to the subscriber.
func (d *Dispatcher) deadLettered(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		dl.deadKey = deadLetterKey(dl.meta.Consumer, dl.meta.Sequence.Stream)
		cause := d.rememberedFailure(ctx, dl)
		if cause == nil {
			v := next(ctx, dl)
			if v.op != opFailed {
				return v
			}
			cause = failureOf(dl.out)
			cause.Event = dl.msgID()
			dl.log.with("err", dl.out.err)
		}
		if ctx.Err() != nil {
			return handedBack
		}
		return d.deadLetter(ctx, dl, cause)
	}
}

// attemptSpan traces the attempt to deliver to the subscriber, and what
// became of it.
func (d *Dispatcher) attemptSpan(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		actx, span := d.startSpan(ctx, "deliver to", dl.attempt, dl.msg.Headers())
		spanOutcome := outcomeDropped
		defer func() { endSpan(span, spanOutcome, dl.out) }()
		v := next(actx, dl)
		spanOutcome = v.spanOutcome()
		return v
	}
}

// onFailure is a step that acts on a failed delivery only: decide says
// what becomes of it.
func onFailure(decide handler) middleware {
	return func(next handler) handler {
		return func(ctx context.Context, dl *delivery) verdict {
			if v := next(ctx, dl); v.op != opFailed {
				return v
			}
			return decide(ctx, dl)
		}
	}
}

// dropUndelivered drops an event whose delivery failed for good: the
// Trigger has no dead-letter sink.
func (d *Dispatcher) dropUndelivered(_ context.Context, dl *delivery) verdict {
	d.drop(&dl.log, DropNoDeadLetterSink, "delivery failed for good and there is no dead-letter sink: event dropped", "err", dl.out.err)
	return verdict{op: opTerm, reason: fmt.Sprintf("delivery failed: %d", dl.out.code)}
}

// retry has a failed delivery tried again: by another dispatcher at once
// when this one is stopping, else after the DeliverySpec's backoff while
// it allows retries and Knative's rules retry the failure. Else the
// delivery failed for good.
func (d *Dispatcher) retry(ctx context.Context, dl *delivery) verdict {
	dl.log.with("code", dl.out.code)
	if ctx.Err() != nil {
		return handedBack
	}
	if dl.out.permit && dl.attempt <= d.policy.Retries {
		delay := d.policy.Delay(dl.attempt, dl.out.resp)
		dl.log.get().Warn("delivery failed, will retry", "err", dl.out.err, "delay", delay)
		d.stats.Retried.Add(1)
		return verdict{op: opNak, delay: delay, outcome: outcomeRetry}
	}
	return failed
}

// replied stores the subscriber's reply event in the Broker: the event is
// delivered, and acked, only once its reply is stored.
func (d *Dispatcher) replied(next handler) handler {
	return func(ctx context.Context, dl *delivery) verdict {
		v := next(ctx, dl)
		if v.op != opAck {
			return v
		}
		if reply := dl.out.reply; reply != nil {
			// The reply carries the event's TTL on into the Broker.
			ttl, _ := types.ToInteger(dl.attr(kbroker.TTLAttribute))
			_ = kbroker.SetTTL(reply.Context, ttl)
			_, err := d.pub.Publish(ctx, d.cfg.Broker, reply)
			switch {
			case errors.Is(err, broker.ErrTTLExhausted):
				d.drop(&dl.log, DropReplyTTL, "reply not stored: knativebrokerttl is exhausted (an event loop?)",
					"replyId", reply.ID(), "replySource", reply.Source(), "replyType", reply.Type())
			case err != nil:
				dl.out.err = fmt.Errorf("store reply event: %w", err)
				dl.out.code = http.StatusBadGateway
				dl.out.permit = true
				return failed
			default:
				d.stats.Replies.Add(1)
			}
		}
		d.stats.Delivered.Add(1)
		return v
	}
}

// send is one attempt to deliver the event to the subscriber.
func (d *Dispatcher) send(ctx context.Context, dl *delivery) verdict {
	dl.out = d.attempt(ctx, d.cfg.Subscriber, dl, nil)
	switch {
	case dl.out.undecodable:
		d.drop(&dl.log, DropUndecodable, "undecodable stored event, terminated", "err", dl.out.err)
		return termUndecodable
	case dl.out.err != nil:
		return failed
	}
	return ack
}
