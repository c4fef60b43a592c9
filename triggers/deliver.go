package triggers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	kbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/ceheader"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
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
	// undecodable: the stored event, needed whole, does not decode.
	undecodable bool
}

// delivery is an event on its way to a subscriber: its message in the
// stream, and the event decoded from it once a step needs more than the
// message (a structured delivery, a dead letter).
type delivery struct {
	msg     jetstream.Msg
	meta    *jetstream.MsgMetadata
	attempt int // JetStream's count of deliveries, this one included
	ev      *cloudevents.Event
	ttl     int32 // the broker's TTL, read before it is taken off ev
	// out is the last attempt to send the event to the subscriber.
	out outcome
	// deadKey keys the event's dead-letter state, when the Trigger has a
	// dead-letter sink.
	deadKey string
	log     eventLog
}

// event is the decoded event without the broker's TTL, which subscribers
// are not shown.
func (dl *delivery) event() (*cloudevents.Event, error) {
	if dl.ev == nil {
		ev, err := broker.Decode(dl.msg.Headers(), dl.msg.Data())
		if err != nil {
			return nil, err
		}
		dl.ttl, _ = kbroker.GetTTL(ev.Context)
		_ = kbroker.DeleteTTL(ev.Context)
		dl.ev = &ev
	}
	return dl.ev, nil
}

// attr is an attribute of the stored event (source, id, the broker's TTL),
// from its header, or from the decoded event when it was stored in the
// structured form of earlier versions, which has no ce- headers.
func (dl *delivery) attr(name string) string {
	h := dl.msg.Headers()
	if broker.StoredAttribute(h, "specversion") != "" {
		return broker.StoredAttribute(h, name)
	}
	ev, err := dl.event()
	if err != nil {
		return ""
	}
	switch name {
	case "source":
		return ev.Source()
	case "id":
		return ev.ID()
	case kbroker.TTLAttribute:
		return fmt.Sprint(dl.ttl)
	}
	return ""
}

// msgID is the event's broker.MsgID.
func (dl *delivery) msgID() string {
	return broker.MsgID(dl.attr("source"), dl.attr("id"))
}

// errUndecodable says the stored event does not decode.
var errUndecodable = errors.New("undecodable stored event")

// errFiltered says the Trigger's filter does not pass an event.
var errFiltered = errors.New("filtered out")

// filterOut runs the Trigger's filter on the event, decoding only what the
// filter reads when that is known; errFiltered when the filter fails it.
func (d *Dispatcher) filterOut(ctx context.Context, dl *delivery) error {
	var ev cloudevents.Event
	var err error
	if d.partial {
		ev, err = broker.DecodeAttributes(dl.msg.Headers(), dl.msg.Data(), d.reads)
	} else {
		var full *cloudevents.Event
		if full, err = dl.event(); err == nil {
			ev = *full
		}
	}
	if err != nil {
		return err
	}
	if d.filter.Filter(ctx, ev) == eventfilter.FailFilter {
		return errFiltered
	}
	return nil
}

// rememberedFailure is the failure an earlier delivery of the event left
// for the dead-letter sink, which refused it then; nil for none. Only a
// redelivery can have one.
func (d *Dispatcher) rememberedFailure(ctx context.Context, dl *delivery) *failure {
	if dl.attempt <= 1 {
		return nil
	}
	failed, err := d.dead.get(ctx, dl.deadKey)
	if err != nil {
		dl.log.get().Warn("could not read the dead-letter state, delivering to the subscriber", "err", err)
		return nil
	}
	if failed != nil && failed.Event != dl.msgID() {
		dl.log.get().Warn("dead-letter state of another event under this key, ignored", "key", dl.deadKey)
		return nil
	}
	return failed
}

// deadLetter sends the event to the dead-letter sink (d.dead is open
// whenever the Trigger has one). A refused send is retried at the sink,
// with the DeliverySpec's backoff, for as long as the event stays in the
// stream: what the subscriber said is remembered in JetStream before the
// event is handed back.
func (d *Dispatcher) deadLetter(ctx context.Context, dl *delivery, failed *failure) verdict {
	dctx, span := d.startSpan(ctx, "dead-letter", dl.attempt, dl.msg.Headers())
	dead := d.attempt(dctx, d.cfg.DeadLetter, dl, failed.transformers())
	spanOutcome := outcomeDropped
	defer func() { endSpan(span, spanOutcome, dead) }()
	if dead.undecodable {
		d.drop(&dl.log, DropUndecodable, "undecodable stored event, terminated", "err", dead.err)
		return verdict{op: opTerm, reason: "undecodable event", forget: failed.Tries > 0}
	}
	if dead.err == nil {
		spanOutcome = outcomeDeadLetter
		dl.log.get().Warn("event sent to the dead-letter sink", "subscriberCode", failed.Code)
		d.stats.DeadLettered.Add(1)
		return verdict{op: opAck, forget: failed.Tries > 0}
	}
	failed.Tries++
	if !dead.permit {
		// The sink says it will never take this event (a 400, say):
		// trying again cannot help.
		d.drop(&dl.log, DropDeadLetterRefused, "the dead-letter sink refused the event for good: event dropped",
			"dlsErr", dead.err, "dlsCode", dead.code, "tries", failed.Tries)
		return verdict{op: opTerm, reason: fmt.Sprintf("dead-letter sink answered %d", dead.code), forget: failed.Tries > 1}
	}
	// The DeliverySpec's backoff, but never a tight loop (without
	// backoffDelay it is 0) and never so long that a sink back in service
	// waits for hours.
	delay := min(max(d.policy.Delay(failed.Tries, dead.resp), minDeadLetterDelay), maxDeadLetterDelay)
	spanOutcome = outcomeRetry
	dl.log.get().Error("dead-letter delivery failed, will retry the dead-letter sink", "dlsErr", dead.err, "dlsCode", dead.code, "tries", failed.Tries, "delay", delay)
	if err := d.dead.put(context.WithoutCancel(ctx), dl.deadKey, failed); err != nil {
		dl.log.get().Error("could not remember the dead-letter state: the next delivery goes to the subscriber again", "err", err)
	}
	return verdict{op: opNak, delay: delay, outcome: outcomeRetry}
}

// eventLog is the logger of one delivery, made only when something is
// logged: slog's With copies the handler, and a delivered event, the
// common case, logs nothing. Its lines name the event by what the stored
// message's headers say.
type eventLog struct {
	base   *slog.Logger
	stored nats.Header
	args   []any
	log    *slog.Logger
}

// with adds attributes to every line logged from now on.
func (l *eventLog) with(args ...any) {
	l.args = append(l.args, args...)
	l.log = nil
}

func (l *eventLog) get() *slog.Logger {
	if l.log == nil {
		l.log = l.base.With(append(broker.StoredIdentity(l.stored), l.args...)...)
	}
	return l.log
}

// Bounds of the wait before a refused dead-letter send is tried again.
const (
	minDeadLetterDelay = time.Second
	maxDeadLetterDelay = time.Minute
)

// forgetDeadLetter removes what was remembered for the event's dead letter.
func (d *Dispatcher) forgetDeadLetter(ctx context.Context, dl *delivery) {
	if err := d.dead.forget(context.WithoutCancel(ctx), dl.deadKey); err != nil {
		dl.log.get().Warn("dead-letter state left behind (it expires)", "err", err)
	}
}

// drop logs and counts an event (or reply) given up for reason.
func (d *Dispatcher) drop(log *eventLog, reason Drop, what string, args ...any) {
	d.stats.drop(reason)
	log.get().Error(what, append([]any{"drop", reason.String()}, args...)...)
}

// ackErr logs a failed Ack, Nak or Term: JetStream then redelivers the
// event after AckWait, which is safe but should be seen.
func (d *Dispatcher) ackErr(log *eventLog, op string, err error) {
	if err != nil {
		log.get().Warn("could not "+op+" the message; JetStream will redeliver it", "err", err)
	}
}

// fitJSONFormat makes the JSON event format carry e's data as it is: data
// that a JSON media type announces but is not JSON, and data that is not
// UTF-8 text, go base64 (data_base64, or datacontentencoding in 0.3), so a
// structured delivery is valid UTF-8 JSON and decodes to the same bytes.
// The binary mode writes the data as it is either way.
func fitJSONFormat(e *cloudevents.Event) {
	if len(e.DataEncoded) == 0 || e.DataBase64 {
		return
	}
	mt, _, _ := strings.Cut(e.DataContentType(), ";")
	mt = strings.TrimSpace(mt)
	ok := utf8.Valid(e.DataEncoded)
	switch written, read := jsonMediaType(strings.ToLower(mt)), jsonMediaType(mt); {
	case written != read:
		// sdk-go writes data as JSON by the media type in lower case but
		// reads it by the type as written: only base64 reads back the same.
		ok = false
	case written:
		// Embedded as a JSON value: the white space around it would not
		// survive.
		ok = ok && json.Valid(e.DataEncoded) && len(bytes.TrimSpace(e.DataEncoded)) == len(e.DataEncoded)
	}
	if ok {
		return
	}
	if ec, ok := e.Context.(*event.EventContextV03); ok {
		enc := event.Base64
		ec.DataContentEncoding = &enc
		return
	}
	e.DataBase64 = true
}

// jsonMediaType reports whether sdk-go embeds the data of media type mt as
// JSON in the JSON event format.
func jsonMediaType(mt string) bool {
	switch mt {
	case "", cloudevents.ApplicationJSON, "text/json", cloudevents.ApplicationCloudEventsJSON, cloudevents.ApplicationCloudEventsBatchJSON:
		return true
	}
	return false
}

// attempt sends the event once to ep, with tr applied, and classifies the
// response.
func (d *Dispatcher) attempt(ctx context.Context, ep Endpoint, dl *delivery, tr binding.Transformers) outcome {
	dest, release, err := d.acquire(ctx, ep)
	if err != nil {
		return failedAttempt(nil, http.StatusServiceUnavailable, nil, nil, fmt.Errorf("no instance of the subscriber became ready: %w", err))
	}
	defer release()

	rctx, cancel := context.WithTimeout(ctx, d.policy.Timeout)
	defer cancel()
	req, err := d.request(rctx, dest, dl, tr)
	if err != nil {
		return outcome{dest: dest, code: http.StatusInternalServerError, err: err, undecodable: errors.Is(err, errUndecodable)}
	}
	tracing.ToHTTP(rctx, req.Header)
	resp, err := d.client.Do(req)
	if err != nil {
		return failedAttempt(dest, http.StatusInternalServerError, nil, []byte("dispatch error: "+err.Error()), err)
	}
	body, err := readBody(resp)
	if err != nil {
		return failedAttempt(dest, http.StatusInternalServerError, nil, []byte("read response: "+err.Error()), fmt.Errorf("read response: %w", err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return failedAttempt(dest, resp.StatusCode, resp, body, fmt.Errorf("subscriber answered %d", resp.StatusCode))
	}
	if resp.StatusCode == http.StatusAccepted {
		// Accepted for later: the body is not a reply.
		return outcome{dest: dest, code: resp.StatusCode, resp: resp, body: body}
	}
	reply, err := parseReply(rctx, resp.Header, body)
	if err != nil {
		// Knative's broker answers 502 for a 2xx whose body is not an event.
		return failedAttempt(dest, http.StatusBadGateway, resp, body, err)
	}
	return outcome{dest: dest, code: resp.StatusCode, resp: resp, body: body, reply: reply}
}

// request is the POST of ev to dest, in the Trigger's delivery format:
// binary mode unless spec.delivery.format is json. Attribute headers go out
// percent-encoded (binding §3.1.3.2). In binary mode, the stored message
// goes out message to message: its ce- headers but the broker's TTL and
// its data as they are.
func (d *Dispatcher) request(ctx context.Context, dest *url.URL, dl *delivery, tr binding.Transformers) (*http.Request, error) {
	asJSON := d.cfg.Delivery != nil && d.cfg.Delivery.Format != nil && *d.cfg.Delivery.Format == eventingduckv1.DeliveryFormatJson
	if !asJSON && len(tr) == 0 {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, dest.String(), bytes.NewReader(dl.msg.Data()))
		if err != nil {
			return nil, fmt.Errorf("build request: %w", err)
		}
		if broker.CopyHTTPBinary(dl.msg.Headers(), req.Header, kbroker.TTLAttribute) {
			req.Header.Set("Prefer", "reply")
			return req, nil
		}
	}
	ev, err := dl.event()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUndecodable, err)
	}
	if asJSON {
		body, err := structured(ctx, ev, tr)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, dest.String(), bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("build request: %w", err)
		}
		req.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON)
		req.Header.Set("Prefer", "reply")
		return req, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, dest.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Prefer", "reply")
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(ev), req, tr...); err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	ceheader.EncodeHTTP(req.Header)
	return req, nil
}

// readBody reads at most maxResponseBytes of resp's body and closes it; an
// empty body, the common answer, costs no buffer.
func readBody(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength == 0 {
		return nil, nil
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
}

// structured is ev in the JSON event format, with tr applied to a copy.
// It writes the format itself rather than through encoding/json, which
// would re-indent JSON data and escape its HTML characters: the data stays
// byte for byte as it was sent.
func structured(ctx context.Context, ev *cloudevents.Event, tr binding.Transformers) ([]byte, error) {
	if len(tr) > 0 {
		c := ev.Clone()
		out, err := binding.ToEvent(ctx, binding.ToMessage(&c), tr...)
		if err != nil {
			return nil, fmt.Errorf("encode event: %w", err)
		}
		ev = out
	}
	fitJSONFormat(ev)
	var b bytes.Buffer
	if err := event.WriteJson(ev, &b); err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b.Bytes(), nil
}

// acquire gets an instance of ep, waiting at most AcquireTimeout. A fixed
// URL is at hand at once and needs no deadline.
func (d *Dispatcher) acquire(ctx context.Context, ep Endpoint) (*url.URL, func(), error) {
	if u, ok := ep.(URL); ok {
		return u.U, func() {}, nil
	}
	since := time.Now()
	defer d.waited(ctx, since)
	actx, cancel := context.WithTimeout(ctx, d.cfg.AcquireTimeout)
	defer cancel()
	return ep.Acquire(actx)
}

// failedAttempt is a failed attempt with the status it counts as; a transport
// error (no response at all) counts as 500, as Knative reports it.
func failedAttempt(dest *url.URL, code int, resp *http.Response, body []byte, err error) outcome {
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
	if err := ceheader.DecodeHTTP(h); err != nil {
		return nil, fmt.Errorf("invalid reply event: %w", err)
	}
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
	if err := broker.Validate(ev); err != nil {
		return nil, fmt.Errorf("invalid reply event: %w", err)
	}
	return ev, nil
}

// keepAlive tells JetStream the message is still being worked on, three
// times per AckWait, so a slow subscriber does not make it redeliver the
// event to someone else. It runs on a timer, not a goroutine of its own;
// once the returned stop returns, no further signal is sent. A signal that
// fails is logged to log.
func keepAlive(msg jetstream.Msg, ackWait time.Duration, log *slog.Logger) (stop func()) {
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
		if err := msg.InProgress(); err != nil {
			log.Warn("could not tell JetStream the event is in progress; it may redeliver it after AckWait",
				append(broker.StoredIdentity(msg.Headers()), "err", err)...)
		}
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}
