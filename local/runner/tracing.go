package runner

import (
	"context"
	"net/url"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/local/traces"
)

// OTLPPath is where the runner receives the functions' spans (OTLP/HTTP).
// No Broker can be there: a namespace never starts with "_".
const OTLPPath = "/_otlp/v1/traces"

// setupTracing traces the runner's hops with the SDK the OTEL_* variables
// configure, and keeps the recent traces in memory for the board, unless
// OTEL_SDK_DISABLED=true.
func (r *Runner) setupTracing(ctx context.Context) error {
	store := traces.New(0)
	t, err := tracing.Setup(ctx, tracing.Options{Service: "koffeeshop", Processors: []sdktrace.SpanProcessor{store.Processor()}})
	if err != nil {
		return err
	}
	r.tracing = t
	if !tracing.Disabled() {
		r.traces = store
	}
	return nil
}

// tracingEnv is the OpenTelemetry environment of a function instance,
// besides the runner's own, which it inherits (the sampler, say): it
// exports its spans to the runner, which keeps them for the board and
// passes them on to the collector, if there is one.
func (r *Runner) tracingEnv(service string) []string {
	if r.traces == nil {
		return nil
	}
	env := []string{
		"OTEL_SERVICE_NAME=" + service,
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=" + r.IngressURL() + OTLPPath,
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
		// Spans reach the board a quarter second after they end.
		"OTEL_BSP_SCHEDULE_DELAY=250",
	}
	if r.opts.HTTP.Token != "" {
		env = append(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS=Authorization="+url.PathEscape("Bearer "+r.opts.HTTP.Token))
	}
	return env
}
