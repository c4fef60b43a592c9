// Package clusteringress is the Broker ingress of a cluster: one HTTP front
// door, POST /<namespace>/<broker>, for every Broker of the
// KoffeeshopJetStream class. It is the local runner's broker.Ingress over a
// set of Brokers learned from the API server: those of the class that the
// controller has made Ready (their stream exists). It never creates a
// stream; the controller does.
package clusteringress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/client-go/rest"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/eventing/pkg/client/informers/externalversions"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	"knative.dev/pkg/apis"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/dataplane"
	"github.com/koffeeshop/koffeeshop/broker/httpserver"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
)

// DefaultAddr is where the ingress listens; the ingress Service's port
// targets it.
const DefaultAddr = ":8080"

// Options of the ingress. A zero field takes the default beside it.
type Options struct {
	// KubeConfig is the cluster whose Brokers are served.
	KubeConfig *rest.Config
	// NATS is where the Brokers' streams live.
	NATS natsconn.Options
	// Addr is the ingress's listen address (DefaultAddr).
	Addr string
	// ProbeAddr serves /health/readiness, /health/liveness and /metrics
	// (ops.DefaultAddr).
	ProbeAddr string
	// Token, when set, is the bearer token every POST must carry.
	Token string
	// MaxBodyBytes limits a request body (broker.DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// PublishTimeout bounds the wait for JetStream's acknowledgement
	// (broker.DefaultPublishTimeout).
	PublishTimeout time.Duration
	// Server are the HTTP server's limits (httpserver.New's defaults).
	Server httpserver.Options
	// DrainDelay is how long the ingress keeps serving, unready, once ctx
	// is done and before it closes its listener, so that the endpoints
	// stop sending here first (0: none).
	DrainDelay time.Duration
	// ShutdownTimeout bounds the wait for requests in flight (30s).
	ShutdownTimeout time.Duration
	// Log receives the ingress's logs (slog.Default()).
	Log *slog.Logger
	// Tracer traces each accepted event (nil: none).
	Tracer trace.TracerProvider
}

func (o Options) withDefaults() Options {
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o
}

// Run serves the ingress until ctx is done, then drains: it turns unready,
// waits DrainDelay, stops accepting connections, lets the requests in
// flight finish (each is answered only once its event is stored or
// refused), and drains the NATS connection. An API server or a NATS that
// cannot be reached is no error: readiness says so until they can be.
func Run(ctx context.Context, o Options) error {
	o = o.withDefaults()
	c, err := dataplane.Dial(o.KubeConfig, o.NATS, o.ProbeAddr, "koffeeshop-broker-ingress", o.Log)
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	defer ln.Close()
	return serve(ctx, o, c.Eventing, c.NATS, ln, c.Probes)
}

// serve runs the ingress on client's Brokers (the API server's, or a fake
// in tests), storing events through nc, until ctx is done.
func serve(ctx context.Context, o Options, client versioned.Interface, nc *nats.Conn, ln, probeLn net.Listener) error {
	o = o.withDefaults()
	log := o.Log
	store, err := broker.NewStore(nc, o.PublishTimeout)
	if err != nil {
		return err
	}

	factory := externalversions.NewSharedInformerFactory(client, 0)
	brokers := factory.Eventing().V1().Brokers()
	synced := brokers.Informer().HasSynced
	// The informers outlive ctx: requests still draining look Brokers up.
	informerCtx, stopInformers := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopInformers()
		factory.Shutdown()
	}()
	factory.Start(informerCtx.Done())

	reg := ops.NewRegistry()
	var h http.Handler = broker.NewIngress(store, NewBrokers(brokers.Lister()), log.With("component", "ingress"),
		broker.IngressOptions{MaxBodyBytes: o.MaxBodyBytes, Tracer: o.Tracer})
	if o.Token != "" {
		h = broker.RequireBearer(o.Token, h)
	}
	srv := httpserver.New(instrument(reg, untilSynced(synced, h)), o.Server)

	probes := ops.Serve(probeLn, func() error {
		if !synced() {
			return errors.New("the Broker informer has not synced")
		}
		return natsconn.Connected(nc)
	}, reg)
	errc := make(chan error, 1)
	go func() { errc <- fmt.Errorf("ingress: %w", srv.Serve(ln)) }()
	log.Info("Serving", "addr", ln.Addr().String(), "probes", probeLn.Addr().String(), "brokerClass", brokerreconciler.ClassName)

	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error("Stopping", "error", err)
	case err = <-probes.Err():
		log.Error("Stopping", "error", err)
	}
	probes.Drain()
	if err == nil && o.DrainDelay > 0 {
		log.Info("Draining: unready, still serving", "for", o.DrainDelay)
		time.Sleep(o.DrainDelay)
	}
	log.Info("Draining: finishing requests in flight")
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(shutCtx); serr != nil {
		err = errors.Join(err, fmt.Errorf("ingress shutdown: %w", serr))
	}
	if derr := natsconn.Drain(shutCtx, nc); derr != nil {
		err = errors.Join(err, derr)
	}
	_ = probes.Shutdown(shutCtx)
	log.Info("Stopped")
	return err
}

// untilSynced answers 503 until the Broker informer has synced, when it
// could not yet tell an unknown Broker (404) from one it has not read.
func untilSynced(synced func() bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !synced() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "the ingress has not read the Brokers yet, retry", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// instrument counts the ingress's requests by status code, and those in
// flight, in reg.
func instrument(reg prometheus.Registerer, next http.Handler) http.Handler {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "koffeeshop_broker_ingress_requests_total",
		Help: "Requests the Broker ingress answered, by status code: 202 is an event stored.",
	}, []string{"code"})
	inFlight := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "koffeeshop_broker_ingress_in_flight",
		Help: "Requests the Broker ingress is handling now.",
	})
	reg.MustRegister(requests, inFlight)
	return promhttp.InstrumentHandlerInFlight(inFlight, promhttp.InstrumentHandlerCounter(requests, next))
}

// Brokers is the set of Brokers the ingress serves, read from an
// informer's lister at each request, so it changes as the Brokers do.
type Brokers struct {
	lister eventinglisters.BrokerLister
}

var _ broker.Brokers = Brokers{}

// NewBrokers returns the Brokers of lister, as the ingress sees them.
func NewBrokers(lister eventinglisters.BrokerLister) Brokers {
	return Brokers{lister: lister}
}

// State is what the ingress answers for r: BrokerReady for a Broker of
// the KoffeeshopJetStream class whose Ready condition is True,
// BrokerNotReady for one that is not (yet, or for now: a dead-letter sink
// that does not resolve, a ConfigMap edit to fix, a NATS hiccup in a
// reconcile; its stream is there, and the sender should retry), and
// BrokerUnknown for any other Broker, one being deleted (its stream is
// about to go) and none at all.
//
// Ready is read without comparing status.observedGeneration to the
// generation, unlike Knative's IsReady: an edit of a Ready Broker's spec
// leaves its stream in place, and refusing events until the controller
// has looked at the edit would lose them for nothing. When the edit makes
// the Broker unready, the controller says so and the ingress follows.
func (s Brokers) State(r broker.Ref) broker.BrokerState {
	b, err := s.lister.Brokers(r.Namespace).Get(r.Name)
	if err != nil {
		return broker.BrokerUnknown
	}
	return StateOf(b)
}

// StateOf is State for the Broker b.
func StateOf(b *eventingv1.Broker) broker.BrokerState {
	if b.Annotations[brokerreconciler.ClassAnnotationKey] != brokerreconciler.ClassName || b.DeletionTimestamp != nil {
		return broker.BrokerUnknown
	}
	if c := b.Status.GetCondition(apis.ConditionReady); c != nil && c.IsTrue() {
		return broker.BrokerReady
	}
	return broker.BrokerNotReady
}
