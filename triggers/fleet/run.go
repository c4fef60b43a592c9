package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/client-go/rest"
	"knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/eventing/pkg/client/informers/externalversions"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/dataplane"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// Options of the dispatcher. A zero field takes the default beside it.
type Options struct {
	// KubeConfig is the cluster whose Triggers are dispatched.
	KubeConfig *rest.Config
	// NATS is where the Brokers' streams and the Triggers' consumers
	// live.
	NATS natsconn.Options
	// ProbeAddr serves /health/readiness, /health/liveness and /metrics
	// (ops.DefaultAddr).
	ProbeAddr string
	// DrainTimeout bounds how long a stopping dispatcher (the process
	// ends, or its Trigger changed or went) lets its deliveries in flight
	// finish; those still running then are handed back to JetStream
	// (triggers' default, 30s).
	DrainTimeout time.Duration
	// PublishTimeout bounds the wait for JetStream to store a reply
	// (broker.DefaultPublishTimeout).
	PublishTimeout time.Duration
	// ShutdownTimeout bounds the NATS drain once every dispatcher has
	// stopped (10s).
	ShutdownTimeout time.Duration
	// Log receives the dispatcher's logs (slog.Default()).
	Log *slog.Logger
	// Tracer traces each delivery attempt (nil: none).
	Tracer trace.TracerProvider
}

func (o Options) withDefaults() Options {
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o
}

// Run dispatches the Triggers of the class until ctx is done, then stops
// every dispatcher, letting deliveries in flight finish, and drains the
// NATS connection. An API server or a NATS that cannot be reached is no
// error: readiness says so until they can be.
func Run(ctx context.Context, o Options) error {
	c, err := dataplane.Dial(o.KubeConfig, o.NATS, o.ProbeAddr, "koffeeshop-trigger-dispatcher", o.Log)
	if err != nil {
		return err
	}
	defer c.Close()
	return serve(ctx, o, c.Eventing, c.NATS, c.Probes, nil)
}

// serve runs the fleet on client's Triggers and Brokers (the API
// server's, or a fake in tests) over nc until ctx is done. observe, when
// set, hears of the loops' dispatchers starting and stopping.
func serve(ctx context.Context, o Options, client versioned.Interface, nc *nats.Conn, probeLn net.Listener, observe func(string, event)) error {
	o = o.withDefaults()
	log := o.Log
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	// Replies go back into their Broker on the same connection.
	store, err := broker.NewStore(nc, o.PublishTimeout)
	if err != nil {
		return err
	}

	factory := externalversions.NewSharedInformerFactory(client, 0)
	triggerInformer := factory.Eventing().V1().Triggers()
	brokerInformer := factory.Eventing().V1().Brokers()
	reg := ops.NewRegistry()
	coll := &triggers.Collector{}
	reg.MustRegister(coll)

	// The loops end with ctx, or when the probes' server fails.
	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	f := newFleet(loopCtx, triggerInformer.Lister(), brokerInformer.Lister(), js, store, triggers.NewHTTPClient(), coll, o.DrainTimeout, log)
	f.tracer = o.Tracer
	f.observe = observe
	th, bh := f.handlers()
	if _, err := triggerInformer.Informer().AddEventHandler(th); err != nil {
		return fmt.Errorf("trigger informer: %w", err)
	}
	if _, err := brokerInformer.Informer().AddEventHandler(bh); err != nil {
		return fmt.Errorf("broker informer: %w", err)
	}
	synced := func() bool {
		return triggerInformer.Informer().HasSynced() && brokerInformer.Informer().HasSynced()
	}
	// The informers outlive ctx while the dispatchers drain; f ignores
	// what they say by then.
	informerCtx, stopInformers := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopInformers()
		factory.Shutdown()
	}()
	factory.Start(informerCtx.Done())

	probes := ops.Serve(probeLn, func() error {
		if !synced() {
			return errors.New("the Trigger and Broker informers have not synced")
		}
		return natsconn.Connected(nc)
	}, reg)
	log.Info("Dispatching", "probes", probeLn.Addr().String(), "brokerClass", brokerreconciler.ClassName)

	select {
	case <-ctx.Done():
	case err = <-probes.Err():
		log.Error("Stopping", "error", err)
	}
	probes.Drain()
	log.Info("Draining: letting deliveries in flight finish")
	stopLoops()
	f.close()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownTimeout)
	defer cancel()
	if derr := natsconn.Drain(shutCtx, nc); derr != nil {
		err = errors.Join(err, derr)
	}
	_ = probes.Shutdown(shutCtx)
	log.Info("Stopped")
	return err
}
