// Package serve runs one CloudEvents function: an HTTP server answering
// CloudEvents on "/" (and on the paths of any further Routes) with the reply
// event, health endpoints for the platform and a graceful drain on shutdown.
package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/koffeeshop/koffeeshop/broker/ceheader"
	"github.com/koffeeshop/koffeeshop/broker/httpserver"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// Handler handles one CloudEvent and returns the reply event, or nil for no
// reply. Errors built with BadRequest are answered with 400; any other error
// with 500, telling the sender to retry.
type Handler func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error)

// Defaults applied to zero Config fields.
const (
	DefaultDrainTimeout   = 30 * time.Second
	DefaultHandlerTimeout = 5 * time.Minute
	DefaultMaxBodyBytes   = 1 << 20
)

// Route serves Handler on Path besides the function's main handler on "/",
// for events that reach the function by another door, such as the dead
// letters a Destination with a ref and a relative uri sends to a path.
type Route struct {
	Path    string
	Handler Handler
	// describe, set by Describe, is what GET answers on Path.
	describe any
}

// Describe is a route that answers GET / with v as JSON: what a function
// tells a person who asks it (take-order its menu), besides the events it
// takes on POST /.
func Describe(v any) Route { return Route{Path: "/", describe: v} }

// Paths of the health endpoints.
const (
	ReadinessPath = "/health/readiness"
	LivenessPath  = "/health/liveness"
)

// Config configures a Server.
type Config struct {
	// Instance name handed to handlers through Instance(ctx).
	Instance string
	// Logger receives the server and handler logs; nil discards them.
	Logger *slog.Logger
	// DrainTimeout bounds the wait for in-flight requests on shutdown.
	DrainTimeout time.Duration
	// HandlerTimeout bounds the handling of one event.
	HandlerTimeout time.Duration
	// MaxBodyBytes caps the size of a request body.
	MaxBodyBytes int64
	// Name is the function's name, in its spans' names.
	Name string
	// Tracer traces each event handled; nil traces nothing (the trace
	// context still goes on to the reply).
	Tracer trace.TracerProvider
}

// Server serves a Handler over HTTP.
type Server struct {
	instance       string
	log            *slog.Logger
	drainTimeout   time.Duration
	handlerTimeout time.Duration
	maxBodyBytes   int64
	mux            *http.ServeMux
	ready          atomic.Bool
	name           string
	tracer         trace.Tracer
}

// New returns a Server answering events on "/" with h, and on each route's
// path with its handler. A route's path is matched exactly.
func New(cfg Config, h Handler, routes ...Route) (*Server, error) {
	if h == nil {
		return nil, errors.New("serve: nil handler")
	}
	if err := checkRoutes(routes); err != nil {
		return nil, err
	}
	s := &Server{
		instance:       cfg.Instance,
		log:            cfg.Logger,
		drainTimeout:   cfg.DrainTimeout,
		handlerTimeout: cfg.HandlerTimeout,
		maxBodyBytes:   cfg.MaxBodyBytes,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.drainTimeout <= 0 {
		s.drainTimeout = DefaultDrainTimeout
	}
	if s.handlerTimeout <= 0 {
		s.handlerTimeout = DefaultHandlerTimeout
	}
	if s.maxBodyBytes <= 0 {
		s.maxBodyBytes = DefaultMaxBodyBytes
	}
	s.name = cfg.Name
	if s.name == "" {
		s.name = "function"
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider()
	}
	s.tracer = cfg.Tracer.Tracer(tracing.Scope)

	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /", s.receiver(h))
	for _, rt := range routes {
		if rt.describe != nil {
			body, err := json.MarshalIndent(rt.describe, "", "  ")
			if err != nil {
				return nil, fmt.Errorf("serve: describe: %w", err)
			}
			s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(append(body, '\n'))
			})
			continue
		}
		s.mux.HandleFunc("POST "+rt.Path, s.receiver(rt.Handler))
	}
	s.mux.HandleFunc("GET "+ReadinessPath, s.readiness)
	s.mux.HandleFunc("GET "+LivenessPath, liveness)
	return s, nil
}

// checkRoutes refuses routes that would shadow "/" or a health endpoint, or
// that ServeMux would read as a pattern rather than a plain path.
func checkRoutes(routes []Route) error {
	seen := map[string]bool{}
	for _, rt := range routes {
		if rt.describe != nil {
			if seen["GET /"] {
				return errors.New("serve: Describe given twice")
			}
			seen["GET /"] = true
			continue
		}
		switch {
		case rt.Handler == nil:
			return fmt.Errorf("serve: route %q: nil handler", rt.Path)
		case !strings.HasPrefix(rt.Path, "/") || rt.Path == "/" || strings.HasSuffix(rt.Path, "/"):
			return fmt.Errorf("serve: route %q: want an absolute path other than \"/\", without a trailing slash", rt.Path)
		case strings.ContainsAny(rt.Path, "{} \t?#"):
			return fmt.Errorf("serve: route %q: wildcards, spaces, queries and fragments are not allowed", rt.Path)
		case rt.Path == ReadinessPath || rt.Path == LivenessPath:
			return fmt.Errorf("serve: route %q: that is a health endpoint", rt.Path)
		case seen[rt.Path]:
			return fmt.Errorf("serve: route %q: defined twice", rt.Path)
		}
		seen[rt.Path] = true
	}
	return nil
}

// ServeHTTP routes a request to the event handler or a health endpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// Serve accepts connections on ln until ctx is done, then marks the server
// not ready and drains in-flight requests for up to the drain timeout. It
// returns nil after a complete drain. Serve closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// An event may take the whole handler timeout to handle and answer,
	// and its body up to a minute to arrive.
	srv := httpserver.New(s, httpserver.Options{
		ReadTimeout:  time.Minute,
		WriteTimeout: s.handlerTimeout + 30*time.Second,
	})
	srv.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)

	errc := make(chan error, 1)
	s.ready.Store(true)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		s.ready.Store(false)
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
	}

	s.ready.Store(false)
	s.log.Info("shutting down", "drainTimeout", s.drainTimeout)
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.drainTimeout)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		closeErr := srv.Close()
		<-errc
		return errors.Join(fmt.Errorf("drain in-flight requests: %w", err), closeErr)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http: %w", err)
	}
	s.log.Info("stopped")
	return nil
}

// invoke adapts a Handler to the cloudevents receiver.
func (s *Server) invoke(ctx context.Context, h Handler, e cloudevents.Event) (reply *cloudevents.Event, result protocol.Result) {
	log := s.log.With("eventId", e.ID(), "eventType", e.Type(), "eventSource", e.Source())
	ctx = WithLogger(WithInstance(ctx, s.instance), log)
	ctx, cancel := context.WithTimeout(ctx, s.handlerTimeout)
	defer cancel()

	defer func() {
		if r := recover(); r != nil {
			log.Error("handler panicked", "panic", r, "stack", string(debug.Stack()))
			reply, result = nil, cehttp.NewResult(http.StatusInternalServerError, "handler panicked")
		}
	}()

	reply, err := h(ctx, e)
	if err == nil {
		return reply, nil
	}
	code := StatusCode(err)
	if code >= http.StatusInternalServerError {
		log.Error("event handling failed", "status", code, "err", err)
	} else {
		log.Warn("event refused", "status", code, "err", err)
	}
	var res *cehttp.Result
	if errors.As(err, &res) {
		return nil, res
	}
	return nil, cehttp.NewResult(code, "%w", err)
}

// receiver handles one CloudEvent request with h on the request's own
// goroutine. Bodies over the size limit get 413 and requests that are not
// decodable CloudEvents 415 or 400, so that the sender does not retry what
// can never succeed; the handler's reply goes back in binary mode.
func (s *Server) receiver(h Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { s.receive(w, r, h) }
}

func (s *Server) receive(w http.ResponseWriter, r *http.Request, h Handler) {
	if r.ContentLength > s.maxBodyBytes {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read request body", http.StatusBadRequest)
		return
	}

	// Binding §3.1.3.2: attribute headers arrive percent-encoded.
	err = ceheader.DecodeHTTP(r.Header)
	var event *cloudevents.Event
	if err == nil {
		event, err = binding.ToEvent(r.Context(), cehttp.NewMessage(r.Header, io.NopCloser(bytes.NewReader(body))))
	}
	if err == nil {
		err = event.Validate()
	}
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, binding.ErrUnknownEncoding) {
			code = http.StatusUnsupportedMediaType
		}
		s.log.Warn("request refused", "status", code, "err", err)
		http.Error(w, fmt.Sprintf("not a valid CloudEvent: %v", err), code)
		return
	}

	ctx, span := s.startSpan(r, event)
	defer span.End()
	reply, res := s.invoke(ctx, h, *event)
	if res != nil {
		span.SetAttributes(semconv.HTTPResponseStatusCode(StatusCode(res)))
		span.SetStatus(codes.Error, Message(res))
		// The body is the message alone: the status line already has the
		// code, and a dead-letter sink reads this body as the reason.
		http.Error(w, Message(res), StatusCode(res))
		return
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(http.StatusOK))
	if reply == nil {
		w.WriteHeader(http.StatusOK)
		return
	}
	// The reply was made in this span.
	tracing.OnEvent(ctx, reply)
	if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(reply), http.StatusOK, encodingWriter{w}); err != nil {
		s.log.Error("write reply", "err", err)
	}
}

// startSpan starts the span of handling event: a child of the request's
// trace context, else of the event's.
func (s *Server) startSpan(r *http.Request, event *cloudevents.Event) (context.Context, trace.Span) {
	ctx := tracing.FromHTTP(r.Context(), r.Header)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx, _ = tracing.FromEvent(ctx, event)
	}
	ctx, span := tracing.Start(s.tracer, ctx, s.name+" "+event.Type(), trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("cloudevents.event_id", event.ID()),
			attribute.String("cloudevents.event_type", event.Type()),
			attribute.String("cloudevents.event_source", event.Source()),
			attribute.String("koffeeshop.instance", s.instance),
		)
	}
	return ctx, span
}

// encodingWriter percent-encodes the reply's attribute headers (binding
// §3.1.3.2) as the status line goes out.
type encodingWriter struct{ http.ResponseWriter }

func (e encodingWriter) WriteHeader(code int) {
	ceheader.EncodeHTTP(e.Header())
	e.ResponseWriter.WriteHeader(code)
}

func (s *Server) readiness(w http.ResponseWriter, _ *http.Request) {
	if !s.ready.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok")
}

func liveness(w http.ResponseWriter, _ *http.Request) {
	_, _ = io.WriteString(w, "ok")
}

// Main runs the function process named name: it reads the environment,
// serves h (and routes) until SIGTERM or SIGINT, drains, and exits 0, or 1
// on failure.
func Main(name string, h Handler, routes ...Route) {
	instance := InstanceName(os.Getenv)
	log := NewLogger(os.Stderr, name, instance)
	if err := run(name, instance, log, h, routes); err != nil {
		log.Error("function failed", "err", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func run(name, instance string, log *slog.Logger, h Handler, routes []Route) error {
	drain, err := DurationEnv(os.Getenv, EnvDrainTimeout, DefaultDrainTimeout)
	if err != nil {
		return fmt.Errorf("read drain timeout: %w", err)
	}
	if drain == 0 {
		return fmt.Errorf("%s must be positive", EnvDrainTimeout)
	}
	tr, stopTracing, err := tracing.ForProcess(context.Background(), log, name)
	if err != nil {
		return err
	}
	defer stopTracing()
	srv, err := New(Config{Instance: instance, Logger: log, DrainTimeout: drain, Name: name, Tracer: tr.Provider()}, h, routes...)
	if err != nil {
		return err
	}
	ln, err := Listen(os.Getenv)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// A second signal during the drain terminates the process immediately.
	context.AfterFunc(ctx, stop)

	if dir := os.Getenv(EnvCPUProfileDir); dir != "" {
		done, err := profileCPU(filepath.Join(dir, instance+".prof"))
		if err != nil {
			return err
		}
		defer done()
	}
	return srv.Serve(ctx, ln)
}

// EnvCPUProfileDir, when set, makes the function write a CPU profile of
// its whole life to <dir>/<instance>.prof when it stops (make bench reads
// them to show where each function's CPU goes).
const EnvCPUProfileDir = "KOFFEESHOP_CPUPROFILE_DIR"

func profileCPU(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
