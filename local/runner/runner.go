// Package runner assembles the whole coffee shop on one machine from the
// manifests in config/: a NATS JetStream server (embedded, or an external
// one), the Broker ingress, one dispatcher per Trigger and the function
// processes behind each Service.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/types"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/httpserver"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/functions/serve"
	"github.com/koffeeshop/koffeeshop/local/board"
	"github.com/koffeeshop/koffeeshop/local/manifest"
	"github.com/koffeeshop/koffeeshop/local/natsd"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
	"github.com/koffeeshop/koffeeshop/local/traces"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// Options configure a Runner.
type Options struct {
	// ConfigDirs hold the manifests (the first is config/; tests add more).
	ConfigDirs []string
	// Only limits the runner to these Services and the Triggers that
	// deliver to them (empty: all), so that several runners on one NATS
	// share the work.
	Only []string
	// Name tells this runner's instances apart from another runner's.
	Name      string
	NATS      NATSOptions
	HTTP      HTTPOptions
	Functions FunctionOptions
}

// NATSOptions say where the events are stored: an embedded NATS
// JetStream, or an external NATS.
type NATSOptions struct {
	// External, when its URL is set, is the NATS to use (with its
	// credentials and TLS files) instead of the embedded one.
	External natsconn.Options
	// DataDir is where the embedded JetStream stores its files.
	DataDir string
	// Port is the embedded server's client port (-1: any free port).
	Port int
	// Replicas is the JetStream replication of the Brokers' streams (3 on
	// a three-node cluster; 0: the Broker's ConfigMap's, else 1).
	Replicas int
}

// HTTPOptions configure the runner's one HTTP port: the Broker ingress,
// the board, /status, /metrics and the functions' spans.
type HTTPOptions struct {
	// Addr is the listen address (127.0.0.1:8080).
	Addr string
	// Token, when set, is the bearer token the ingress, the board's
	// actions and the span receiver require (401 without it).
	Token string
	// MaxBodyBytes limits an ingress request body.
	MaxBodyBytes int64
	// Server are the HTTP server's limits (httpserver.New's defaults).
	Server httpserver.Options
}

// FunctionOptions say how the function processes run.
type FunctionOptions struct {
	// BinDir holds the function executables, named after the last element
	// of their ko:// image path.
	BinDir string
	// Env overrides container environment, per Service name.
	Env map[string][]string
	// Output receives the function processes' output (os.Stderr).
	Output io.Writer
	// ScaleTick overrides how often the autoscalers sample demand.
	ScaleTick time.Duration
}

func (o Options) withDefaults() Options {
	if o.HTTP.Addr == "" {
		o.HTTP.Addr = "127.0.0.1:8080"
	}
	if o.Functions.Output == nil {
		o.Functions.Output = os.Stderr
	}
	return o
}

// Runner is the assembled system: the Plan, carried out.
type Runner struct {
	opts    Options
	log     *slog.Logger
	set     *manifest.Set // the manifests, which the board reads
	plan    *Plan
	natsSrv *natsd.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *broker.Store
	pools   map[types.NamespacedName]*supervisor.Pool
	disps   []*triggers.Dispatcher
	feeds   map[types.NamespacedName][]*triggers.Dispatcher // the Triggers delivering to each pool
	metrics *prometheus.Registry
	board   *board.Board
	client  *http.Client
	tcoll   *triggers.Collector
	ln      net.Listener
	srv     *http.Server
	tracing *tracing.Tracing
	traces  *traces.Store // nil when tracing is off
	history history
}

// New plans the manifests, starts (or connects to) NATS, creates the
// Brokers' streams and the Triggers' consumers, and binds the ingress. Call
// Run to start serving.
func New(ctx context.Context, opts Options, log *slog.Logger) (_ *Runner, err error) {
	opts = opts.withDefaults()
	set, err := loadConfig(ctx, opts.ConfigDirs)
	if err != nil {
		return nil, err
	}
	plan, err := NewPlan(set, opts, log)
	if err != nil {
		return nil, err
	}
	r := &Runner{
		opts: opts, log: log, set: set, plan: plan, metrics: ops.NewRegistry(),
		pools: map[types.NamespacedName]*supervisor.Pool{}, feeds: map[types.NamespacedName][]*triggers.Dispatcher{},
	}
	defer func() {
		if err != nil {
			_ = r.tracing.Shutdown(context.WithoutCancel(ctx))
			r.close()
		}
	}()
	if err = r.connect(); err != nil {
		return nil, err
	}
	if r.store, err = broker.NewStore(r.nc, 0); err != nil {
		return nil, err
	}
	if err = r.setupTracing(ctx); err != nil {
		return nil, err
	}
	if err = r.ensureStreams(ctx); err != nil {
		return nil, err
	}
	if r.ln, err = net.Listen("tcp", opts.HTTP.Addr); err != nil {
		return nil, fmt.Errorf("broker ingress: %w", err)
	}
	if err = r.buildPools(); err != nil {
		return nil, err
	}
	if err = r.buildDispatchers(ctx); err != nil {
		return nil, err
	}
	mux, err := r.routes()
	if err != nil {
		return nil, err
	}
	r.srv = httpserver.New(mux, opts.HTTP.Server)
	return r, nil
}

// ensureStreams makes the Brokers' streams as the plan says. The options
// go to JetStream as they are: a ConfigMap's maxAge of 0 means no limit.
func (r *Runner) ensureStreams(ctx context.Context) error {
	for _, b := range r.plan.Brokers {
		if _, err := r.js.CreateOrUpdateStream(ctx, broker.StreamConfig(b.Ref, b.Stream)); err != nil {
			return fmt.Errorf("ensure stream %s for broker %s: %w", b.Ref.StreamName(), b.Ref, err)
		}
	}
	return nil
}

// routes is the runner's HTTP port: the board (unless another runner has
// it), readiness, metrics, status, the functions' spans and, for the rest,
// the Broker ingress.
func (r *Runner) routes() (*http.ServeMux, error) {
	mux := http.NewServeMux()
	if r.plan.Board != nil {
		if err := r.buildBoard(mux); err != nil {
			return nil, err
		}
	}
	mux.HandleFunc("GET /health/readiness", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", r.serveStatus)
	var refs []broker.Ref
	for _, b := range r.plan.Brokers {
		refs = append(refs, b.Ref)
	}
	ingress := broker.NewIngress(r.store, broker.NewBrokerSet(refs...), r.log.With("component", "ingress"),
		broker.IngressOptions{MaxBodyBytes: r.opts.HTTP.MaxBodyBytes, Tracer: r.tracing.Provider()})
	mux.Handle("/", r.guard(ingress))
	if r.traces != nil {
		mux.Handle("POST "+OTLPPath, r.guard(r.traces.Receiver(r.tracing.Forward, r.log.With("component", "tracing"))))
	}
	return mux, nil
}

// guard requires the runner's token of h's requests, when there is one.
func (r *Runner) guard(h http.Handler) http.Handler {
	if r.opts.HTTP.Token == "" {
		return h
	}
	return broker.RequireBearer(r.opts.HTTP.Token, h)
}

func loadConfig(ctx context.Context, dirs []string) (*manifest.Set, error) {
	if len(dirs) == 0 {
		dirs = []string{"config"}
	}
	set, err := manifest.LoadDir(ctx, dirs...)
	if err != nil {
		return nil, err
	}
	if len(set.Brokers) == 0 {
		return nil, errors.New("config: no Broker defined")
	}
	return set, nil
}

// connect starts the embedded NATS, unless an external one is given, and
// connects to it. Unlike the cluster's processes, the runner fails at once
// without a NATS rather than serving 503s, and it reconnects every quarter
// second after a NATS restart.
func (r *Runner) connect() error {
	no := r.opts.NATS.External
	if no.URL == "" {
		dir := filepath.Join(r.opts.NATS.DataDir, "jetstream")
		if r.opts.NATS.DataDir == "" {
			return errors.New("a data dir is needed for the embedded NATS server")
		}
		srv, err := natsd.Start(natsd.Options{StoreDir: dir, Port: r.opts.NATS.Port}, r.log)
		if err != nil {
			return err
		}
		r.natsSrv = srv
		no.URL = srv.ClientURL()
		r.log.Info("embedded NATS JetStream started", "url", no.URL, "store", dir)
	}
	nc, err := natsconn.Connect(no, "koffeeshop-local", r.log, nats.RetryOnFailedConnect(false), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return err
	}
	r.nc = nc
	if r.js, err = jetstream.New(nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	return nil
}

// buildPools makes the supervisors of the plan's Services.
func (r *Runner) buildPools() error {
	var outMu sync.Mutex
	coldStarts := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "koffeeshop_function_cold_start_seconds",
		Help:    "Time from a Service leaving zero instances to its first ready instance.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"service"})
	r.metrics.MustRegister(coldStarts, poolCollector{r})
	for _, s := range r.plan.Services {
		if _, err := os.Stat(s.Spec.Binary); err != nil {
			return fmt.Errorf("Service %s: image %q: no executable at %s (run `make build`): %w", s.Key, s.Image, s.Spec.Binary, err)
		}
		spec := s.Spec
		spec.Env = slices.Concat(s.Spec.Env, r.functionEnv(s), s.Overrides)
		observer := coldStarts.WithLabelValues(s.Key.Name)
		r.pools[s.Key] = supervisor.NewPool(spec, s.Scaling, supervisor.Options{
			Demand:    func(ctx context.Context) (int, error) { return r.backlog(ctx, s.Key) },
			ColdStart: func(d time.Duration) { observer.Observe(d.Seconds()) },
		}, r.log.With("component", "supervisor"), r.opts.Functions.Output, &outMu)
	}
	return nil
}

// functionEnv is what the runner adds to a function's environment: K_SINK,
// as Knative's SinkBinding sets it, the token to send there, and where its
// spans go.
func (r *Runner) functionEnv(s ServicePlan) []string {
	env := []string{"K_SINK=" + r.IngressURL() + "/" + s.Sink.String()}
	if r.opts.HTTP.Token != "" {
		env = append(env, serve.EnvSinkToken+"="+r.opts.HTTP.Token)
	}
	return append(env, r.tracingEnv(s.Key.Name)...)
}

// backlog is what waits in JetStream for a Service: the events pending or
// unacknowledged in the consumers of the Triggers that deliver to it.
func (r *Runner) backlog(ctx context.Context, svc types.NamespacedName) (int, error) {
	n := 0
	for _, d := range r.feeds[svc] {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		info, err := d.Consumer().Info(ctx)
		cancel()
		if err != nil {
			return n, fmt.Errorf("consumer of trigger %s: %w", d.Name(), err)
		}
		n += int(info.NumPending) + info.NumAckPending
	}
	return n, nil
}

// buildDispatchers makes the dispatchers of the plan's Triggers, with
// their consumers.
func (r *Runner) buildDispatchers(ctx context.Context) error {
	r.client = triggers.NewHTTPClient()
	r.tcoll = &triggers.Collector{}
	r.metrics.MustRegister(r.tcoll)
	for _, t := range r.plan.Triggers {
		cfg := triggers.Config{
			Trigger:     t.Trigger,
			Broker:      t.Broker,
			Delivery:    t.Delivery,
			Subscriber:  r.endpoint(t.Subscriber),
			Concurrency: t.Concurrency,
			AckWait:     t.AckWait,
			Tracer:      r.tracing.Provider(),
		}
		if t.DeadLetter != nil {
			cfg.DeadLetter = r.endpoint(*t.DeadLetter)
		}
		d, err := triggers.New(ctx, r.js, r.store, r.client, cfg, r.log.With("component", "dispatcher"))
		if err != nil {
			return err
		}
		r.disps = append(r.disps, d)
		r.tcoll.Add(d)
		if svc := t.Subscriber.Service; svc.Name != "" {
			r.feeds[svc] = append(r.feeds[svc], d)
		}
	}
	return nil
}

// endpoint is where d is reached: a Service's supervisor, or a URL.
func (r *Runner) endpoint(d Destination) triggers.Endpoint {
	if d.Service.Name == "" {
		return triggers.URL{U: d.URL}
	}
	p := r.pools[d.Service]
	if d.Path != nil {
		return atPath{pool: p, rel: d.Path}
	}
	return p
}

// IngressURL is the base URL of the Broker ingress.
func (r *Runner) IngressURL() string { return "http://" + r.ln.Addr().String() }

// Brokers lists the Brokers served, as namespace/name.
func (r *Runner) Brokers() []string {
	var out []string
	for _, b := range r.plan.Brokers {
		out = append(out, b.Ref.String())
	}
	sort.Strings(out)
	return out
}

// NATSURL is the URL of the NATS server in use, without any password or
// token it carries.
func (r *Runner) NATSURL() string { return r.nc.ConnectedUrlRedacted() }

// Pools returns the function supervisors, by Service.
func (r *Runner) Pools() map[types.NamespacedName]*supervisor.Pool { return r.pools }

// Run serves until ctx is done, or the HTTP server or a dispatcher fails,
// then stops in order: the dispatchers (letting deliveries in flight
// finish), the function instances, the HTTP server, tracing (exporting
// the spans left), and NATS last.
func (r *Runner) Run(ctx context.Context) error {
	poolCtx, stopPools := context.WithCancel(context.WithoutCancel(ctx))
	dispCtx, stopDisps := context.WithCancel(ctx)
	defer stopDisps()
	var poolsWG, dispWG sync.WaitGroup
	for _, p := range r.pools {
		poolsWG.Go(func() { p.Run(poolCtx) })
	}
	dispErr := make(chan error, len(r.disps))
	for _, d := range r.disps {
		dispWG.Go(func() {
			if err := d.Run(dispCtx); err != nil {
				dispErr <- err
			}
		})
	}
	go r.sampleScale(dispCtx)
	if r.board != nil {
		go r.board.Run(dispCtx)
		dispWG.Go(func() {
			if err := r.board.Follow(dispCtx, r.js, *r.plan.Board); err != nil {
				r.log.Error("the board stopped following the broker", "err", err)
			}
		})
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- r.srv.Serve(r.ln) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-srvErr:
		err = fmt.Errorf("broker ingress: %w", err)
	case err = <-dispErr:
	}
	r.log.Info("shutting down")
	// The functions stop before the server: while they drain, their
	// K_SINK events and their last spans still reach the ingress.
	stopDisps()
	dispWG.Wait()
	stopPools()
	poolsWG.Wait()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = r.srv.Shutdown(shutCtx)
	cancel()
	flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if terr := r.tracing.Shutdown(flushCtx); terr != nil {
		r.log.Warn("tracing shutdown", "err", terr)
	}
	cancel()
	r.close()
	r.log.Info("stopped")
	return err
}

func (r *Runner) close() {
	if r.ln != nil {
		_ = r.ln.Close()
	}
	if r.nc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := natsconn.Drain(ctx, r.nc); err != nil {
			r.log.Warn("NATS drain", "err", err)
		}
		cancel()
	}
	if r.natsSrv != nil {
		r.natsSrv.Shutdown()
	}
}

// atPath reaches a Service's instances at a relative URI, as Knative
// resolves a Destination with both a ref and a uri.
type atPath struct {
	pool *supervisor.Pool
	rel  *url.URL
}

// Acquire returns an instance's URL with the relative URI resolved
// against it.
func (a atPath) Acquire(ctx context.Context) (*url.URL, func(), error) {
	u, release, err := a.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	return u.ResolveReference(a.rel), release, nil
}
