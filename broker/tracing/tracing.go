// Package tracing carries W3C trace context across koffeeshop's hops and
// exports spans with the OpenTelemetry SDK, configured as OpenTelemetry
// configures any process: OTEL_EXPORTER_OTLP_* names the collector,
// OTEL_TRACES_SAMPLER(_ARG) the sampling, OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES the resource, OTEL_BSP_* the batching, and
// OTEL_SDK_DISABLED=true turns it off. Without a collector (and without a
// processor of the caller's), tracing is a no-op: a trace context that
// comes in still goes out, unchanged.
//
// The context travels as the traceparent and tracestate headers of HTTP
// and of the stored NATS messages, and on events as the CloudEvents
// Distributed Tracing extension, which an event keeps from its creation.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/extensions"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// Scope names koffeeshop's tracers.
const Scope = "github.com/koffeeshop/koffeeshop"

// Options configure Setup.
type Options struct {
	// Service is service.name unless OTEL_SERVICE_NAME says otherwise.
	Service string
	// Processors receive every span besides the exporter (the local
	// runner keeps recent traces in memory with one).
	Processors []sdktrace.SpanProcessor
}

// Tracing is a process's tracer provider and, when a collector is set,
// its connection to it.
type Tracing struct {
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when a no-op
	client   otlptrace.Client         // nil without a collector
}

// Setup builds the tracer provider the environment asks for.
func Setup(ctx context.Context, o Options) (*Tracing, error) {
	if Disabled() {
		return &Tracing{provider: noop.NewTracerProvider()}, nil
	}
	t := &Tracing{}
	var opts []sdktrace.TracerProviderOption
	if Exporting() {
		client, err := newClient()
		if err != nil {
			return nil, err
		}
		exp, err := otlptrace.New(ctx, client)
		if err != nil {
			return nil, fmt.Errorf("tracing: otlp exporter: %w", err)
		}
		t.client = client
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	for _, p := range o.Processors {
		opts = append(opts, sdktrace.WithSpanProcessor(p))
	}
	if len(opts) == 0 {
		t.provider = noop.NewTracerProvider()
		return t, nil
	}
	// Later detectors win: OTEL_SERVICE_NAME over the default name.
	res, err := resource.New(ctx, resource.WithAttributes(semconv.ServiceName(o.Service)), resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	// The sampler is the SDK's default, which reads OTEL_TRACES_SAMPLER.
	t.sdk = sdktrace.NewTracerProvider(append(opts, sdktrace.WithResource(res))...)
	t.provider = t.sdk
	return t, nil
}

// Exporting reports whether the environment names an OTLP collector for
// traces.
func Exporting() bool {
	return os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != ""
}

// Disabled reports whether OTEL_SDK_DISABLED turns tracing off.
func Disabled() bool {
	return strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true")
}

// newClient is the OTLP client for the collector, over the protocol
// OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names: http/protobuf (the default)
// or grpc. Both read the rest of OTEL_EXPORTER_OTLP_* themselves.
func newClient() (otlptrace.Client, error) {
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "", "http/protobuf":
		return otlptracehttp.NewClient(), nil
	case "grpc":
		return otlptracegrpc.NewClient(), nil
	}
	return nil, fmt.Errorf("tracing: OTLP protocol %q is not supported (http/protobuf, grpc)", proto)
}

// LogErrors sends the errors the OpenTelemetry SDK meets (an export that
// failed, say) to log, instead of the standard logger. The SDK keeps one
// handler per process: a command's main calls this.
func LogErrors(log *slog.Logger) {
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing", "err", err) }))
}

// ForProcess sets tracing up for a command: the SDK's errors to log, and
// the provider the environment asks for. The returned stop exports what
// is left, within 5 seconds, before the process ends.
func ForProcess(ctx context.Context, log *slog.Logger, service string) (*Tracing, func(), error) {
	LogErrors(log)
	t, err := Setup(ctx, Options{Service: service})
	if err != nil {
		return nil, nil, err
	}
	return t, func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := t.Shutdown(ctx); err != nil {
			log.Warn("tracing shutdown", "err", err)
		}
	}, nil
}

// Start starts a span with tracer, unless the trace is not sampled: then
// nothing would be recorded, and the parent's context goes on as it is
// (the parent-based samplers decide the same for every later hop). This
// saves every hop of an unsampled order a span.
func Start(tracer trace.Tracer, parent context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if sc := trace.SpanContextFromContext(parent); sc.IsValid() && !sc.IsSampled() {
		return parent, trace.SpanFromContext(parent)
	}
	return tracer.Start(parent, name, opts...)
}

// Provider is the tracer provider, a no-op one when nothing is traced.
func (t *Tracing) Provider() trace.TracerProvider {
	if t == nil || t.provider == nil {
		return noop.NewTracerProvider()
	}
	return t.provider
}

// Forward sends spans that reached this process in OTLP (the functions'
// spans the local runner receives) on to the collector, as they are; it
// does nothing without one.
func (t *Tracing) Forward(ctx context.Context, spans []*tracepb.ResourceSpans) error {
	if t == nil || t.client == nil {
		return nil
	}
	return t.client.UploadTraces(ctx, spans)
}

// Shutdown flushes the spans not yet exported and closes the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	// The exporter stops the client.
	return t.sdk.Shutdown(ctx)
}

// propagator is W3C trace context: traceparent and tracestate.
var propagator = propagation.TraceContext{}

// FromHTTP is ctx with the trace context of the headers h, when they carry
// one.
func FromHTTP(ctx context.Context, h http.Header) context.Context {
	return propagator.Extract(ctx, propagation.HeaderCarrier(h))
}

// ToHTTP writes ctx's trace context into the headers h.
func ToHTTP(ctx context.Context, h http.Header) {
	propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// Headers are NATS message headers as the propagator reads and writes
// them (the same map type as HTTP's).
func Headers(h map[string][]string) propagation.TextMapCarrier {
	return propagation.HeaderCarrier(h)
}

// FromCarrier is ctx with the trace context c carries.
func FromCarrier(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return propagator.Extract(ctx, c)
}

// ToCarrier writes ctx's trace context into c.
func ToCarrier(ctx context.Context, c propagation.TextMapCarrier) {
	propagator.Inject(ctx, c)
}

// FromEvent is ctx with the trace context of e's Distributed Tracing
// extension; ok is false when e has none that parses.
func FromEvent(ctx context.Context, e *event.Event) (context.Context, bool) {
	tp := extension(e, extensions.TraceParentExtension)
	if tp == "" {
		return ctx, false
	}
	c := propagation.MapCarrier{"traceparent": tp}
	if ts := extension(e, extensions.TraceStateExtension); ts != "" {
		c["tracestate"] = ts
	}
	out := propagator.Extract(ctx, c)
	return out, trace.SpanContextFromContext(out).IsValid()
}

// OnEvent gives e the Distributed Tracing extension of ctx's span, unless
// e already has one: an event keeps the context it was created in.
func OnEvent(ctx context.Context, e *event.Event) {
	if extension(e, extensions.TraceParentExtension) != "" || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	e.SetExtension(extensions.TraceParentExtension, c["traceparent"])
	if ts := c["tracestate"]; ts != "" {
		e.SetExtension(extensions.TraceStateExtension, ts)
	}
}

// SameAsEvent reports whether ctx's span is the one e's Distributed
// Tracing extension names.
func SameAsEvent(ctx context.Context, e *event.Event) bool {
	sc := trace.SpanContextFromContext(ctx)
	tp := extension(e, extensions.TraceParentExtension)
	return sc.IsValid() && len(tp) == 55 && tp[3:35] == sc.TraceID().String() && tp[36:52] == sc.SpanID().String()
}

// TraceID is the trace id of e's Distributed Tracing extension, "" when it
// has none.
func TraceID(e *event.Event) string {
	// version-traceid-parentid-flags, W3C trace context §3.2.
	tp := extension(e, extensions.TraceParentExtension)
	if len(tp) != 55 || tp[2] != '-' || tp[35] != '-' {
		return ""
	}
	return tp[3:35]
}

// extension is e's extension name as a string, "" when absent. A 1.0
// event's map is read as it is: Extensions() copies it, and GetExtension
// builds an error for a missing one.
func extension(e *event.Event, name string) string {
	var v any
	if ec, ok := e.Context.(*event.EventContextV1); ok {
		v = ec.Extensions[name]
	} else {
		v, _ = e.Context.GetExtension(name)
	}
	s, _ := v.(string)
	return s
}
