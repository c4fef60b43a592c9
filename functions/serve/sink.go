package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.opentelemetry.io/otel/trace"

	"github.com/koffeeshop/koffeeshop/broker/ceheader"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// EnvSink is where a function sends events that are not replies: Knative's
// SinkBinding sets it (the local runner too), usually to a Broker.
const EnvSink = "K_SINK"

// DefaultSinkTimeout bounds one send to the sink when NewSink gets 0.
const DefaultSinkTimeout = 5 * time.Second

// Sink sends events to one address over CloudEvents HTTP (binary mode). It
// keeps its connections alive between sends, since a busy function sends
// many events to the same Broker, and is safe for concurrent use.
type Sink struct {
	target  string
	timeout time.Duration
	client  cloudevents.Client
}

// SendError is a send the sink did not accept. Status is the sink's HTTP
// answer, or 0 when none came (a transport error or a timeout).
type SendError struct {
	Status int
	Err    error
}

func (e *SendError) Error() string { return e.Err.Error() }
func (e *SendError) Unwrap() error { return e.Err }

// NewSink returns a Sink sending to the http(s) URL target, each send
// bounded by timeout (DefaultSinkTimeout when 0).
func NewSink(target string, timeout time.Duration, opts ...cehttp.Option) (*Sink, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("sink %q is not an http(s) URL", target)
	}
	if timeout <= 0 {
		timeout = DefaultSinkTimeout
	}
	// The default transport keeps only two idle connections per host: too
	// few for every concurrent send to find one.
	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	opts = append([]cehttp.Option{cehttp.WithTarget(u.String()), cehttp.WithRoundTripper(drainOnClose{transport})}, opts...)
	p, err := cehttp.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", target, err)
	}
	// No defaulters (time, id): what is sent is exactly what the caller
	// built, so a resent event stays identical and the Broker dedups it.
	c, err := cloudevents.NewClient(p)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", target, err)
	}
	return &Sink{target: u.String(), timeout: timeout, client: c}, nil
}

// EnvSinkToken, when set, is the bearer token the sink requires (the
// local runner's -token).
const EnvSinkToken = "KOFFEESHOP_SINK_TOKEN"

// SinkFromEnv returns the Sink named by K_SINK, or nil when it is unset.
func SinkFromEnv(getenv func(string) string, timeout time.Duration) (*Sink, error) {
	v := getenv(EnvSink)
	if v == "" {
		return nil, nil
	}
	var opts []cehttp.Option
	if tok := getenv(EnvSinkToken); tok != "" {
		opts = append(opts, cehttp.WithHeader("Authorization", "Bearer "+tok))
	}
	s, err := NewSink(v, timeout, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvSink, err)
	}
	return s, nil
}

// Target is the URL events are sent to.
func (s *Sink) Target() string { return s.target }

// Send delivers e and returns nil once the sink answered 2xx; otherwise a
// *SendError telling what the sink answered, if anything. It sends once:
// a function sends from the handling of an event, which the dispatcher
// delivers again if the handling fails, so retries here would multiply.
func (s *Sink) Send(ctx context.Context, e cloudevents.Event) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res := s.client.Send(WithTraceHeaders(ctx), e)
	if protocol.IsACK(res) {
		return nil
	}
	var httpRes *cehttp.Result
	if errors.As(res, &httpRes) {
		return &SendError{Status: httpRes.StatusCode, Err: fmt.Errorf("send %s %s to sink: %w", e.Type(), e.ID(), res)}
	}
	return &SendError{Err: fmt.Errorf("send %s %s to sink: %w", e.Type(), e.ID(), res)}
}

// drainOnClose does for each request what the sdk-go HTTP protocol does
// not: it percent-encodes the attribute headers, which the sdk writes as
// they are, and makes closing a response body read what is left of it
// first (up to 64 KiB), since the sdk closes a 2xx answer unread and
// net/http only reuses a connection whose last body was read to the end.
type drainOnClose struct{ rt http.RoundTripper }

func (d drainOnClose) RoundTrip(req *http.Request) (*http.Response, error) {
	// Binding §3.1.3.2: attribute headers go out percent-encoded; a
	// RoundTripper must not change the caller's request, so on a copy.
	req = req.Clone(req.Context())
	ceheader.EncodeHTTP(req.Header)
	resp, err := d.rt.RoundTrip(req)
	if err == nil && resp.Body != nil && resp.Body != http.NoBody {
		resp.Body = drainingBody{resp.Body}
	}
	return resp, err
}

type drainingBody struct{ io.ReadCloser }

func (b drainingBody) Close() error {
	_, _ = io.CopyN(io.Discard, b.ReadCloser, 64<<10)
	return b.ReadCloser.Close()
}

// WithTraceHeaders is ctx carrying the trace context of its span as the
// traceparent and tracestate headers of the CloudEvents HTTP requests sent
// with it (sdk-go's per-request headers), so the receiver continues the
// sender's trace. The sdk-go client itself propagates no trace context.
func WithTraceHeaders(ctx context.Context) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	// The sdk writes the event's headers into this map: a copy per send.
	h := cehttp.HeaderFrom(ctx).Clone()
	tracing.ToHTTP(ctx, h)
	return cehttp.WithCustomHeader(ctx, h)
}
