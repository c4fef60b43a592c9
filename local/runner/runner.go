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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/koffeeshop/koffeeshop/broker"
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
	// BinDir holds the function executables, named after the last element
	// of their ko:// image path.
	BinDir string
	// Addr is the Broker ingress listen address.
	Addr string
	// DataDir is where the embedded JetStream stores its files.
	DataDir string
	// NATSURL connects to an external NATS instead of the embedded one.
	NATSURL string
	// NATSPort is the embedded server's client port (-1: any free port).
	NATSPort int
	// Env overrides container environment, per Service name.
	Env map[string][]string
	// Output receives the function processes' output.
	Output io.Writer
	// MaxBodyBytes limits an ingress request body.
	MaxBodyBytes int64
	// Only limits the runner to these Services and the Triggers that
	// deliver to them (empty: all), so that several runners on one NATS
	// share the work.
	Only []string
	// Name tells this runner's instances apart from another runner's.
	Name string
	// ScaleTick overrides how often the autoscalers sample demand.
	ScaleTick time.Duration
	// IngressToken, when set, is the bearer token the Broker ingress
	// requires (401 without it).
	IngressToken string
	// NATSCreds is a NATS credentials file (JWT and NKey seed).
	NATSCreds string
	// NATSCA, NATSCert and NATSKey configure TLS to NATS: a CA to trust,
	// and a client certificate for mutual TLS.
	NATSCA, NATSCert, NATSKey string
	// Replicas is the JetStream replication of the Brokers' streams (3 on
	// a three-node cluster).
	Replicas int
}

// Runner is the assembled system.
type Runner struct {
	opts    Options
	log     *slog.Logger
	set     *manifest.Set
	natsSrv *natsd.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *broker.Store
	pools   map[string]*supervisor.Pool // by namespace/name
	disps   []*triggers.Dispatcher
	feeds   map[string][]*triggers.Dispatcher // the Triggers delivering to each pool
	sinks   map[string]bool                   // Services run only as dead-letter sinks, by namespace/name
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

// New loads the manifests, starts (or connects to) NATS, creates the
// Brokers' streams and the Triggers' consumers, and binds the ingress. Call
// Run to start serving.
func New(ctx context.Context, opts Options, log *slog.Logger) (_ *Runner, err error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:8080"
	}
	if opts.Output == nil {
		opts.Output = os.Stderr
	}
	r := &Runner{opts: opts, log: log, pools: map[string]*supervisor.Pool{}, feeds: map[string][]*triggers.Dispatcher{}, metrics: prometheus.NewRegistry()}
	r.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	defer func() {
		if err != nil {
			_ = r.tracing.Shutdown(context.WithoutCancel(ctx))
			r.close()
		}
	}()
	if r.set, err = loadConfig(ctx, opts.ConfigDirs); err != nil {
		return nil, err
	}
	r.sinks = r.deadLetterServices()
	if err = r.connect(); err != nil {
		return nil, err
	}
	if r.store, err = broker.NewStore(r.nc, log.With("component", "broker"), 0); err != nil {
		return nil, err
	}
	if err = r.setupTracing(ctx); err != nil {
		return nil, err
	}
	var refs []broker.Ref
	for _, b := range r.set.Brokers {
		ref := broker.Ref{Namespace: b.Namespace, Name: b.Name}
		if err = r.ensureStream(ctx, b); err != nil {
			return nil, err
		}
		refs = append(refs, ref)
	}
	if r.ln, err = net.Listen("tcp", opts.Addr); err != nil {
		return nil, fmt.Errorf("broker ingress: %w", err)
	}
	if err = r.buildPools(); err != nil {
		return nil, err
	}
	if err = r.buildDispatchers(ctx); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	if len(opts.Only) == 0 {
		if err = r.buildBoard(mux); err != nil {
			return nil, err
		}
	}
	mux.HandleFunc("GET /health/readiness", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", r.serveStatus)
	var ingress http.Handler = broker.NewIngress(r.store, broker.NewBrokerSet(refs...), log.With("component", "ingress"), broker.IngressOptions{MaxBodyBytes: opts.MaxBodyBytes, Tracer: r.tracing.Provider()})
	if opts.IngressToken != "" {
		ingress = broker.RequireBearer(opts.IngressToken, ingress)
	}
	mux.Handle("/", ingress)
	if r.traces != nil {
		var otlp http.Handler = r.traces.Receiver(r.tracing.Forward, log.With("component", "tracing"))
		if opts.IngressToken != "" {
			otlp = broker.RequireBearer(opts.IngressToken, otlp)
		}
		mux.Handle("POST "+OTLPPath, otlp)
	}
	r.srv = broker.NewServer(mux, broker.ServerOptions{})
	return r, nil
}

// ensureStream makes the Broker's stream as the Broker class does on a
// cluster: with the settings of the ConfigMap its spec.config names, else
// the defaults; -replicas, when set, wins.
func (r *Runner) ensureStream(ctx context.Context, b *eventingv1.Broker) error {
	ref := broker.Ref{Namespace: b.Namespace, Name: b.Name}
	o := broker.DefaultStreamOptions()
	if c := b.Spec.Config; c != nil {
		ns := c.Namespace
		if ns == "" {
			ns = b.Namespace
		}
		cm := r.set.ConfigMap(ns, c.Name)
		if cm == nil {
			return fmt.Errorf("Broker %s: spec.config names ConfigMap %s/%s, which is not in config", ref, ns, c.Name)
		}
		var err error
		if o, err = broker.ParseStreamOptions(cm.Data); err != nil {
			return fmt.Errorf("Broker %s: ConfigMap %s/%s: %w", ref, ns, c.Name, err)
		}
	}
	if r.opts.Replicas > 0 {
		o.Replicas = r.opts.Replicas
	}
	if _, err := r.js.CreateOrUpdateStream(ctx, broker.StreamConfig(ref, o)); err != nil {
		return fmt.Errorf("ensure stream %s for broker %s: %w", ref.StreamName(), ref, err)
	}
	return nil
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

func (r *Runner) connect() error {
	url := r.opts.NATSURL
	if url == "" {
		dir := filepath.Join(r.opts.DataDir, "jetstream")
		if r.opts.DataDir == "" {
			return errors.New("a data dir is needed for the embedded NATS server")
		}
		srv, err := natsd.Start(natsd.Options{StoreDir: dir, Port: r.opts.NATSPort}, r.log)
		if err != nil {
			return err
		}
		r.natsSrv = srv
		url = srv.ClientURL()
		r.log.Info("embedded NATS JetStream started", "url", url, "store", dir)
	}
	connOpts := []nats.Option{
		nats.Name("koffeeshop-local"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// While disconnected, fail a publish at once (the ingress answers
		// 503) instead of buffering it in memory.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				r.log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			r.log.Info("reconnected to NATS", "url", c.ConnectedUrl())
		}),
	}
	if r.opts.NATSCreds != "" {
		connOpts = append(connOpts, nats.UserCredentials(r.opts.NATSCreds))
	}
	if r.opts.NATSCA != "" {
		connOpts = append(connOpts, nats.RootCAs(r.opts.NATSCA))
	}
	if r.opts.NATSCert != "" || r.opts.NATSKey != "" {
		connOpts = append(connOpts, nats.ClientCert(r.opts.NATSCert, r.opts.NATSKey))
	}
	nc, err := nats.Connect(url, connOpts...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	r.nc = nc
	if r.js, err = jetstream.New(nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	return nil
}

func (r *Runner) buildPools() error {
	var outMu sync.Mutex
	coldStarts := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "koffeeshop_function_cold_start_seconds",
		Help:    "Time from a Service leaving zero instances to its first ready instance.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"service"})
	r.metrics.MustRegister(coldStarts, poolCollector{r})
	for _, svc := range r.set.Services {
		if !r.runs(svc.Name) && !r.sinks[svc.Namespace+"/"+svc.Name] {
			continue
		}
		spec, err := r.poolSpec(svc)
		if err != nil {
			return err
		}
		sc, err := scalingFor(svc)
		if err != nil {
			return fmt.Errorf("Service %s/%s: %w", svc.Namespace, svc.Name, err)
		}
		if r.opts.ScaleTick > 0 {
			sc.Tick = r.opts.ScaleTick
		}
		key := svc.Namespace + "/" + svc.Name
		observer := coldStarts.WithLabelValues(svc.Name)
		r.pools[key] = supervisor.NewPool(spec, sc, supervisor.Options{
			Demand:    func(ctx context.Context) (int, error) { return r.backlog(ctx, key) },
			ColdStart: func(d time.Duration) { observer.Observe(d.Seconds()) },
		}, r.log.With("component", "supervisor"), r.opts.Output, &outMu)
	}
	return nil
}

// runs reports whether this runner runs the Service.
func (r *Runner) runs(service string) bool {
	return len(r.opts.Only) == 0 || slices.Contains(r.opts.Only, service)
}

// deadLetterServices are the Services this runner runs only because a
// Trigger it runs dead-letters to them (with -only): a dead letter can only
// go to an instance of this runner. Without a Trigger of their own they
// stay at zero until a dead letter comes.
func (r *Runner) deadLetterServices() map[string]bool {
	out := map[string]bool{}
	if len(r.opts.Only) == 0 {
		return out
	}
	for _, t := range r.set.Triggers {
		if ref := t.Spec.Subscriber.Ref; ref == nil || !r.runs(ref.Name) {
			continue
		}
		d := triggers.EffectiveDelivery(t, r.set.Broker(t.Namespace, manifest.TriggerBroker(t)))
		if d == nil || d.DeadLetterSink == nil || d.DeadLetterSink.Ref == nil {
			continue
		}
		ref := d.DeadLetterSink.Ref
		ns := ref.Namespace
		if ns == "" {
			ns = t.Namespace
		}
		if !r.runs(ref.Name) {
			out[ns+"/"+ref.Name] = true
		}
	}
	return out
}

// backlog is what waits in JetStream for a Service: the events pending or
// unacknowledged in the consumers of the Triggers that deliver to it.
func (r *Runner) backlog(ctx context.Context, pool string) (int, error) {
	n := 0
	for _, d := range r.feeds[pool] {
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

func (r *Runner) poolSpec(svc *servingv1.Service) (supervisor.Spec, error) {
	tmpl := svc.Spec.Template
	c := tmpl.Spec.Containers[0]
	bin, err := binaryFor(r.opts.BinDir, c.Image)
	if err != nil {
		return supervisor.Spec{}, fmt.Errorf("Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	var env []string
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	// K_SINK, as Knative's SinkBinding sets it (config/'s SinkBinding, else
	// the namespace's Broker): where a function sends
	// events that are not replies.
	sink := r.sinkBroker(svc.Namespace)
	if ns, name, ok := r.set.SinkFor(svc); ok {
		sink = ns + "/" + name
	}
	env = append(env, "K_SINK="+r.IngressURL()+"/"+sink)
	if r.opts.IngressToken != "" {
		env = append(env, serve.EnvSinkToken+"="+r.opts.IngressToken)
	}
	env = append(env, r.tracingEnv(svc.Name)...)
	env = append(env, r.opts.Env[svc.Name]...)
	spec := supervisor.Spec{
		Namespace:   svc.Namespace,
		Name:        svc.Name,
		InstanceTag: r.opts.Name,
		Binary:      bin,
		Env:         env,
	}
	if cc := tmpl.Spec.ContainerConcurrency; cc != nil {
		spec.ContainerConcurrency = int(*cc)
	}
	if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "" {
		spec.ReadinessPath = p.HTTPGet.Path
	}
	if ts := tmpl.Spec.TimeoutSeconds; ts != nil {
		spec.DrainTimeout = time.Duration(*ts) * time.Second
	}
	return spec, nil
}

// binaryFor maps a ko:// image to the executable built from it.
func binaryFor(binDir, image string) (string, error) {
	const ko = "ko://"
	if !strings.HasPrefix(image, ko) {
		return "", fmt.Errorf("image %q: the local runner runs ko:// images only", image)
	}
	bin := filepath.Join(binDir, filepath.Base(strings.TrimPrefix(image, ko)))
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("image %q: no executable at %s (run `make build`): %w", image, bin, err)
	}
	return bin, nil
}

func (r *Runner) buildDispatchers(ctx context.Context) error {
	r.client = triggers.NewHTTPClient()
	r.tcoll = &triggers.Collector{}
	r.metrics.MustRegister(r.tcoll)
	for _, t := range r.set.Triggers {
		if ref := t.Spec.Subscriber.Ref; len(r.opts.Only) > 0 && (ref == nil || !r.runs(ref.Name)) {
			continue
		}
		b := r.set.Broker(t.Namespace, manifest.TriggerBroker(t))
		sub, err := r.endpoint(t.Namespace, t.Spec.Subscriber)
		if err != nil {
			return fmt.Errorf("Trigger %s/%s: subscriber: %w", t.Namespace, t.Name, err)
		}
		delivery := triggers.EffectiveDelivery(t, b)
		var dls triggers.Endpoint
		if delivery != nil && delivery.DeadLetterSink != nil {
			if dls, err = r.endpoint(t.Namespace, *delivery.DeadLetterSink); err != nil {
				return fmt.Errorf("Trigger %s/%s: deadLetterSink: %w", t.Namespace, t.Name, err)
			}
		}
		d, err := triggers.New(ctx, r.js, r.store, r.client, triggers.Config{
			Trigger:     t,
			Broker:      broker.Ref{Namespace: b.Namespace, Name: b.Name},
			Delivery:    delivery,
			Subscriber:  sub,
			DeadLetter:  dls,
			Concurrency: r.concurrency(t),
			AckWait:     r.ackWait(t),
			Tracer:      r.tracing.Provider(),
		}, r.log.With("component", "dispatcher"))
		if err != nil {
			return err
		}
		r.disps = append(r.disps, d)
		r.tcoll.Add(d)
		if a, ok := sub.(atPath); ok {
			sub = a.pool
		}
		if p, ok := sub.(*supervisor.Pool); ok {
			key := t.Namespace + "/" + p.Name()
			r.feeds[key] = append(r.feeds[key], d)
		}
	}
	return nil
}

// endpoint resolves a Destination: a Service in config, or a URI.
func (r *Runner) endpoint(ns string, d duckv1.Destination) (triggers.Endpoint, error) {
	if d.Ref != nil {
		refNS := d.Ref.Namespace
		if refNS == "" {
			refNS = ns
		}
		p, ok := r.pools[refNS+"/"+d.Ref.Name]
		if !ok {
			return nil, fmt.Errorf("Service %s/%s is not in config", refNS, d.Ref.Name)
		}
		if d.URI != nil {
			// Knative resolves a ref with a (relative) uri to the uri
			// resolved against the ref's address, e.g. notify + /dead-letter.
			return atPath{pool: p, rel: d.URI.URL()}, nil
		}
		return p, nil
	}
	if d.URI == nil {
		return nil, errors.New("neither ref nor uri is set")
	}
	return triggers.URL{U: d.URI.URL()}, nil
}

// concurrency is how many events a Trigger delivers at once: its
// annotation (triggers.ConcurrencyAnnotation), else what its Service can take (containerConcurrency times
// max-scale), else 100.
func (r *Runner) concurrency(t *eventingv1.Trigger) int {
	n, ok, err := triggers.AnnotatedConcurrency(t)
	if err != nil {
		r.log.Warn("ignoring an invalid annotation", "trigger", t.Name, "err", err)
	} else if ok {
		return n
	}
	ref := t.Spec.Subscriber.Ref
	if ref == nil {
		return 100
	}
	svc := r.set.Service(t.Namespace, ref.Name)
	if svc == nil {
		return 100
	}
	cc := 100
	if c := svc.Spec.Template.Spec.ContainerConcurrency; c != nil && *c > 0 {
		cc = int(*c)
	}
	maxScale := 1
	if _, v, ok := autoscaling.MaxScaleAnnotation.Get(svc.Spec.Template.Annotations); ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			maxScale = n
		}
	}
	return min(cc*maxScale, 1000)
}

// ackWait reads triggers.AckWaitAnnotation; 0 leaves the dispatcher's
// default.
func (r *Runner) ackWait(t *eventingv1.Trigger) time.Duration {
	d, _, err := triggers.AnnotatedAckWait(t)
	if err != nil {
		r.log.Warn("ignoring an invalid annotation", "trigger", t.Name, "err", err)
	}
	return d
}

// IngressURL is the base URL of the Broker ingress.
func (r *Runner) IngressURL() string { return "http://" + r.ln.Addr().String() }

// Brokers lists the Brokers served, as namespace/name.
func (r *Runner) Brokers() []string {
	var out []string
	for _, b := range r.set.Brokers {
		out = append(out, b.Namespace+"/"+b.Name)
	}
	sort.Strings(out)
	return out
}

// NATSURL is the URL of the NATS server in use, without any password or
// token it carries.
func (r *Runner) NATSURL() string { return r.nc.ConnectedUrlRedacted() }

// Pools returns the function supervisors, by namespace/name.
func (r *Runner) Pools() map[string]*supervisor.Pool { return r.pools }

// Run serves until ctx is done, then stops in order: the ingress first, the
// dispatchers (letting deliveries in flight finish), the function
// instances, and NATS last.
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
		b := r.set.Brokers[0]
		dispWG.Go(func() {
			if err := r.board.Follow(dispCtx, r.js, broker.Ref{Namespace: b.Namespace, Name: b.Name}); err != nil {
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
		_ = r.nc.Drain()
		r.nc.Close()
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
