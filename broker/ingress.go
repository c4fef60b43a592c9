package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/koffeeshop/koffeeshop/broker/ceheader"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// DefaultMaxBodyBytes is the default limit on an ingress request body.
const DefaultMaxBodyBytes = 1 << 20

// IngressOptions configure an Ingress.
type IngressOptions struct {
	// MaxBodyBytes limits the request body; larger requests get 413.
	MaxBodyBytes int64
	// Tracer traces each accepted event; nil traces nothing (an incoming
	// trace context still goes on with the event).
	Tracer trace.TracerProvider
}

// Brokers tells the ingress which Brokers it serves: the local runner's
// are fixed by config/, a cluster's come and go, and are served only while
// Ready.
type Brokers interface {
	State(Ref) BrokerState
}

// BrokerState is what the ingress answers for a Broker.
type BrokerState int

const (
	// BrokerUnknown does not exist (404).
	BrokerUnknown BrokerState = iota
	// BrokerNotReady exists but cannot take events now (503, retry).
	BrokerNotReady
	// BrokerReady takes events.
	BrokerReady
)

// BrokerSet is a fixed set of Brokers, all Ready.
type BrokerSet map[Ref]bool

// State is BrokerReady for a Broker of the set.
func (s BrokerSet) State(r Ref) BrokerState {
	if s[r] {
		return BrokerReady
	}
	return BrokerUnknown
}

// NewBrokerSet returns the set of refs.
func NewBrokerSet(refs ...Ref) BrokerSet {
	s := make(BrokerSet, len(refs))
	for _, r := range refs {
		s[r] = true
	}
	return s
}

// Ingress is the HTTP front door of the Brokers: POST /<namespace>/<broker>,
// as Knative's broker-ingress serves it.
type Ingress struct {
	pub     Publisher
	brokers Brokers
	log     *slog.Logger
	maxBody int64
	tracer  trace.Tracer
}

// NewIngress serves the given Brokers and stores accepted events with pub.
func NewIngress(pub Publisher, brokers Brokers, log *slog.Logger, o IngressOptions) *Ingress {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.Tracer == nil {
		o.Tracer = noop.NewTracerProvider()
	}
	return &Ingress{pub: pub, brokers: brokers, log: log, maxBody: o.MaxBodyBytes, tracer: o.Tracer.Tracer(tracing.Scope)}
}

const allowed = "POST, OPTIONS"

func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ref, ok := parsePath(r.URL.Path)
	if !ok {
		httpError(w, http.StatusNotFound, "no broker at %q: the path is /<namespace>/<broker>", r.URL.Path)
		return
	}
	switch in.brokers.State(ref) {
	case BrokerUnknown:
		httpError(w, http.StatusNotFound, "broker %s does not exist", ref)
		return
	case BrokerNotReady:
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusServiceUnavailable, "broker %s is not ready, retry", ref)
		return
	}
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		w.Header().Set("Allow", allowed)
		w.Header().Set("WebHook-Allowed-Origin", "*")
		w.Header().Set("WebHook-Allowed-Rate", "*")
		w.WriteHeader(http.StatusOK)
		return
	default:
		w.Header().Set("Allow", allowed)
		httpError(w, http.StatusMethodNotAllowed, "method %s is not allowed: use POST", r.Method)
		return
	}

	status, err := in.accept(r.Context(), ref, r)
	if err != nil {
		if status == http.StatusServiceUnavailable {
			in.log.Error("ingress could not store event", "broker", ref.String(), "err", err)
			w.Header().Set("Retry-After", "1")
		}
		httpError(w, status, "%s", err)
		return
	}
	w.WriteHeader(status)
}

func (in *Ingress) accept(ctx context.Context, ref Ref, r *http.Request) (int, error) {
	if isBatch(r.Header.Get("Content-Type")) {
		return http.StatusBadRequest, errors.New("batched CloudEvents (application/cloudevents-batch+json) are not supported: send one event per request")
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, in.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("request body is larger than %d bytes", in.maxBody)
		}
		return http.StatusBadRequest, fmt.Errorf("read request body: %w", err)
	}
	// Binding §3.1.3.2: attribute headers are percent-encoded on the wire.
	if err := ceheader.DecodeHTTP(r.Header); err != nil {
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	msg := cehttp.NewMessage(r.Header, io.NopCloser(bytes.NewReader(body)))
	if msg.ReadEncoding() == binding.EncodingUnknown {
		if sv := r.Header.Get("Ce-Specversion"); sv != "" {
			return http.StatusBadRequest, unsupportedVersion(sv)
		}
		return http.StatusBadRequest, errors.New("not a CloudEvent: send binary mode (ce-specversion, ce-id, ce-source, ce-type headers) or structured mode (Content-Type: application/cloudevents+json)")
	}
	ev, err := binding.ToEvent(ctx, msg)
	if err != nil {
		if sv, ok := structuredVersion(body); ok {
			return http.StatusBadRequest, unsupportedVersion(sv)
		}
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	if err := Validate(ev); err != nil {
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	ctx, span := in.startSpan(ctx, r.Header, ref, ev)
	defer span.End()
	status, err := in.store(ctx, ref, ev)
	if span.IsRecording() {
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
	}
	return status, err
}

// startSpan starts the span of an accepted event: a child of the event's
// own trace context (its Distributed Tracing extension), else of the
// request's traceparent, else the root of a new trace.
func (in *Ingress) startSpan(ctx context.Context, h http.Header, ref Ref, ev *cloudevents.Event) (context.Context, trace.Span) {
	parent, ok := tracing.FromEvent(ctx, ev)
	if !ok {
		parent = tracing.FromHTTP(ctx, h)
	}
	ctx, span := tracing.Start(in.tracer, parent, "ingress "+ref.String(), trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("cloudevents.event_id", ev.ID()),
			attribute.String("cloudevents.event_type", ev.Type()),
			attribute.String("cloudevents.event_source", ev.Source()),
			attribute.String("messaging.destination.name", ref.StreamName()),
		)
	}
	return ctx, span
}

// store publishes an accepted event and says what to answer.
func (in *Ingress) store(ctx context.Context, ref Ref, ev *cloudevents.Event) (int, error) {
	if _, err := in.pub.Publish(ctx, ref, ev); err != nil {
		if errors.Is(err, ErrTTLExhausted) {
			return http.StatusBadRequest, fmt.Errorf("event dropped: %w", ErrTTLExhausted)
		}
		if errors.Is(err, nats.ErrMaxPayload) {
			// Above what the NATS server takes in one message (its
			// max_payload, 1 MiB by default): a retry cannot help.
			return http.StatusRequestEntityTooLarge, fmt.Errorf("event is larger than the NATS server stores: %w", err)
		}
		return http.StatusServiceUnavailable, fmt.Errorf("event not stored, retry: %w", err)
	}
	return http.StatusAccepted, nil
}

// unsupportedVersion names the spec versions the ingress reads.
func unsupportedVersion(sv string) error {
	return fmt.Errorf("specversion %q is not supported (%s, %s)", sv, event.CloudEventsVersionV1, event.CloudEventsVersionV03)
}

// structuredVersion reads the specversion of a structured-mode body that
// sdk-go could not read, and reports whether it is one the ingress does
// not support.
func structuredVersion(body []byte) (string, bool) {
	var v struct {
		SpecVersion *string `json:"specversion"`
	}
	if json.Unmarshal(body, &v) != nil || v.SpecVersion == nil {
		return "", false
	}
	switch *v.SpecVersion {
	case event.CloudEventsVersionV1, event.CloudEventsVersionV03:
		return "", false
	}
	return *v.SpecVersion, true
}

// parsePath splits /<namespace>/<broker> (a trailing slash is allowed).
func parsePath(p string) (Ref, bool) {
	ns, name, ok := strings.Cut(strings.Trim(p, "/"), "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return Ref{}, false
	}
	return Ref{Namespace: ns, Name: name}, true
}

// batchMediaType is the structured batch mode of the CloudEvents HTTP
// binding, which the ingress refuses.
const batchMediaType = "application/cloudevents-batch+json"

// isBatch reports whether a Content-Type names the batch mode, as
// mime.ParseMediaType reads it; the common media types skip the parse.
func isBatch(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	if mt = strings.TrimSpace(mt); mt == "" || strings.EqualFold(mt, "application/json") ||
		strings.EqualFold(mt, "application/cloudevents+json") {
		return false
	}
	parsed, _, _ := mime.ParseMediaType(contentType)
	return parsed == batchMediaType
}

func httpError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintf(w, format+"\n", args...)
}
