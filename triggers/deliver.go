package triggers

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go/jetstream"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	kbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/kncloudevents/attributes"

	"github.com/koffeeshop/koffeeshop/broker"
)

// maxResponseBytes bounds how much of a subscriber's response is read.
const maxResponseBytes = 1 << 20

// outcome is the result of one attempt to deliver an event.
type outcome struct {
	dest   *url.URL
	code   int // HTTP status; 500 for a transport error, as Knative reports it
	resp   *http.Response
	body   []byte
	reply  *cloudevents.Event
	err    error // nil: delivered
	permit bool  // the failure may be retried
}

func (d *Dispatcher) handle(ctx context.Context, msg jetstream.Msg) {
	d.stats.InFlight.Add(1)
	defer d.stats.InFlight.Add(-1)
	defer func() {
		// A bug must not take the dispatcher down with every Trigger of
		// the process; the event stays in the stream for inspection.
		if p := recover(); p != nil {
			d.log.Error("delivery panicked, event terminated", "panic", p, "stack", string(debug.Stack()))
			d.stats.Terminated.Add(1)
			_ = msg.TermWithReason("dispatcher panic")
		}
	}()

	meta, err := msg.Metadata()
	if err != nil {
		d.log.Error("message without metadata, terminating", "err", err)
		_ = msg.Term()
		return
	}
	ev, err := broker.Decode(msg.Data())
	if err != nil {
		d.log.Error("undecodable stored event, terminating", "seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason("undecodable event")
		return
	}
	if d.filter.Filter(ctx, ev) == eventfilter.FailFilter {
		d.stats.Filtered.Add(1)
		_ = msg.Ack()
		return
	}

	stop := keepAlive(msg, d.cfg.AckWait)
	defer stop()

	// The broker's TTL is not shown to subscribers; a reply carries it on.
	ttl, _ := kbroker.GetTTL(ev.Context)
	_ = kbroker.DeleteTTL(ev.Context)

	attempt := int(meta.NumDelivered)
	out := d.attempt(ctx, d.cfg.Subscriber, &ev, nil)
	if out.err == nil && out.reply != nil {
		_ = kbroker.SetTTL(out.reply.Context, ttl)
		if _, err := d.pub.Publish(ctx, d.cfg.Broker, out.reply); err != nil {
			out.err = fmt.Errorf("store reply event: %w", err)
			out.code = http.StatusBadGateway
			out.permit = true
		} else {
			d.stats.Replies.Add(1)
		}
	}
	if out.err == nil {
		d.stats.Delivered.Add(1)
		_ = msg.Ack()
		return
	}

	log := d.log.With("id", ev.ID(), "source", ev.Source(), "type", ev.Type(), "attempt", attempt, "code", out.code)
	if ctx.Err() != nil {
		// Stopping: hand the event back for another dispatcher at once.
		_ = msg.Nak()
		return
	}
	if out.permit && attempt <= d.policy.Retries {
		delay := d.policy.Delay(attempt, out.resp)
		log.Warn("delivery failed, will retry", "err", out.err, "delay", delay)
		d.stats.Retried.Add(1)
		_ = msg.NakWithDelay(delay)
		return
	}
	if d.cfg.DeadLetter == nil {
		log.Error("delivery failed for good and there is no dead-letter sink: event dropped", "err", out.err)
		d.stats.Terminated.Add(1)
		_ = msg.TermWithReason(fmt.Sprintf("delivery failed: %d", out.code))
		return
	}
	dead := d.attempt(ctx, d.cfg.DeadLetter, &ev, errorTransformers(out))
	if dead.err != nil {
		delay := d.policy.Delay(max(attempt, 1), dead.resp)
		log.Error("dead-letter delivery failed, will retry", "err", dead.err, "dlsCode", dead.code, "delay", delay)
		_ = msg.NakWithDelay(delay)
		return
	}
	log.Warn("event sent to the dead-letter sink", "err", out.err)
	d.stats.DeadLettered.Add(1)
	_ = msg.Ack()
}

// errorTransformers add Knative's knativeerrordest, knativeerrorcode and
// knativeerrordata (base64 of the response body, at most 1024 characters).
func errorTransformers(out outcome) binding.Transformers {
	data := base64.StdEncoding.EncodeToString(out.body)
	if len(data) > attributes.KnativeErrorDataExtensionMaxLength {
		data = data[:attributes.KnativeErrorDataExtensionMaxLength]
	}
	dest := url.URL{}
	if out.dest != nil {
		dest = *out.dest
	}
	return attributes.KnativeErrorTransformers(dest, out.code, data)
}

// attempt sends ev once to ep and classifies the response.
func (d *Dispatcher) attempt(ctx context.Context, ep Endpoint, ev *cloudevents.Event, tr binding.Transformers) outcome {
	dest, release, err := d.acquire(ctx, ep)
	if err != nil {
		return failure(nil, http.StatusServiceUnavailable, nil, nil, fmt.Errorf("no instance of the subscriber became ready: %w", err))
	}
	defer release()

	rctx, cancel := context.WithTimeout(ctx, d.policy.Timeout)
	defer cancel()
	if f := d.cfg.Delivery; f != nil && f.Format != nil {
		switch *f.Format {
		case eventingduckv1.DeliveryFormatJson:
			rctx = binding.WithForceStructured(rctx)
		case eventingduckv1.DeliveryFormatBinary:
			rctx = binding.WithForceBinary(rctx)
		}
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, dest.String(), nil)
	if err != nil {
		return outcome{dest: dest, code: http.StatusInternalServerError, err: fmt.Errorf("build request: %w", err)}
	}
	req.Header.Set("Prefer", "reply")
	if err := cehttp.WriteRequest(rctx, binding.ToMessage(ev), req, tr...); err != nil {
		return outcome{dest: dest, code: http.StatusInternalServerError, err: fmt.Errorf("encode event: %w", err)}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return failure(dest, http.StatusInternalServerError, nil, []byte("dispatch error: "+err.Error()), err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	resp.Body.Close()
	if err != nil {
		return failure(dest, http.StatusInternalServerError, nil, []byte("read response: "+err.Error()), fmt.Errorf("read response: %w", err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return failure(dest, resp.StatusCode, resp, body, fmt.Errorf("subscriber answered %d", resp.StatusCode))
	}
	reply, err := parseReply(rctx, resp.Header, body)
	if err != nil {
		// Knative's broker answers 502 for a 2xx whose body is not an event.
		return failure(dest, http.StatusBadGateway, resp, body, err)
	}
	return outcome{dest: dest, code: resp.StatusCode, resp: resp, body: body, reply: reply}
}

// acquire gets an instance of ep, waiting at most AcquireTimeout. A fixed
// URL is at hand at once and needs no deadline.
func (d *Dispatcher) acquire(ctx context.Context, ep Endpoint) (*url.URL, func(), error) {
	if u, ok := ep.(URL); ok {
		return u.U, func() {}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.AcquireTimeout)
	defer cancel()
	return ep.Acquire(ctx)
}

// failure is a failed attempt with the status it counts as; a transport
// error (no response at all) counts as 500, as Knative reports it.
func failure(dest *url.URL, code int, resp *http.Response, body []byte, err error) outcome {
	o := outcome{dest: dest, code: code, resp: resp, body: body, err: err}
	if resp == nil && code == http.StatusInternalServerError {
		o.permit = retryable(nil, err)
	} else {
		o.permit = retryable(&http.Response{StatusCode: code}, nil)
	}
	return o
}

// parseReply reads a reply event from a 2xx response: none for an empty
// body, an error for a body that is not a valid CloudEvent.
func parseReply(ctx context.Context, h http.Header, body []byte) (*cloudevents.Event, error) {
	msg := cehttp.NewMessage(h, io.NopCloser(bytes.NewReader(body)))
	if msg.ReadEncoding() == binding.EncodingUnknown {
		if len(bytes.TrimSpace(body)) == 0 {
			return nil, nil
		}
		return nil, errors.New("response body is not a CloudEvent")
	}
	ev, err := binding.ToEvent(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("invalid reply event: %w", err)
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("invalid reply event: %w", err)
	}
	return ev, nil
}

// keepAlive tells JetStream the message is still being worked on, three
// times per AckWait, so a slow subscriber does not make it redeliver the
// event to someone else. It runs on a timer, not a goroutine of its own;
// once the returned stop returns, no further signal is sent.
func keepAlive(msg jetstream.Msg, ackWait time.Duration) (stop func()) {
	every := max(10*time.Millisecond, ackWait/3)
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}
