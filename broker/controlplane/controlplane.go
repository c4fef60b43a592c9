// Package controlplane runs the control plane of the KoffeeshopJetStream
// Broker class: the Broker and the Trigger controllers, on Knative's
// injection and leader election, against one Kubernetes cluster and one
// NATS.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"
	kubeclient "knative.dev/pkg/client/injection/kube/client"
	"knative.dev/pkg/controller"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/leaderelection"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/system"

	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	triggerreconciler "github.com/koffeeshop/koffeeshop/triggers/reconciler"
)

// Options of the control plane.
type Options struct {
	// KubeConfig is the cluster to control.
	KubeConfig *rest.Config
	// NATS is where the Brokers' streams live.
	NATS natsconn.Options
	// Broker tunes the Broker reconciler: the shared ingress Service
	// that Broker addresses point at, and the bound on JetStream calls
	// (which the Trigger reconciler shares).
	Broker brokerreconciler.Options
	// LeaderElection lets several replicas run with one of them
	// reconciling each bucket of keys.
	LeaderElection LeaderElection
	// ProbePort serves /health and /readiness (0: none).
	ProbePort int
}

// LeaderElection configures Knative's lease-based leader election. The
// leases live in the namespace SYSTEM_NAMESPACE names.
type LeaderElection struct {
	// Component prefixes the lease names (default koffeeshop-controller).
	Component string
	// Buckets splits the keys of each controller among this many leases
	// (default 1).
	Buckets uint32
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's
	// (defaults 60s, 40s, 10s, as Knative's).
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	// Identity names this replica in the leases (default: the host name
	// and a random suffix).
	Identity string
}

func (le LeaderElection) componentConfig() leaderelection.ComponentConfig {
	cc := leaderelection.ComponentConfig{
		Component:     le.Component,
		Buckets:       le.Buckets,
		LeaseDuration: le.LeaseDuration,
		RenewDeadline: le.RenewDeadline,
		RetryPeriod:   le.RetryPeriod,
		Identity:      le.Identity,
	}
	if cc.Component == "" {
		cc.Component = "koffeeshop-controller"
	}
	if cc.Buckets == 0 {
		cc.Buckets = 1
	}
	if cc.LeaseDuration <= 0 {
		cc.LeaseDuration = 60 * time.Second
	}
	if cc.RenewDeadline <= 0 {
		cc.RenewDeadline = 40 * time.Second
	}
	if cc.RetryPeriod <= 0 {
		cc.RetryPeriod = 10 * time.Second
	}
	return cc
}

// controllers is how many controllers Run starts; the client's rate
// limits scale with it, as Knative's sharedmain scales them.
const controllers = 2

// Run runs the control plane until ctx is done. It logs through the zap
// logger in ctx (knative.dev/pkg/logging). It returns an error when the
// options are unusable, or when the informers never synced before ctx
// ended (the API server was unreachable); a NATS that cannot be reached
// is no error, but a condition on every Broker and Trigger, retried.
func Run(ctx context.Context, o Options) error {
	if o.KubeConfig == nil {
		return errors.New("a Kubernetes REST config is required")
	}
	if os.Getenv(system.NamespaceEnvKey) == "" {
		// Knative's leader election puts its leases there, and panics
		// without it.
		return fmt.Errorf("%s must name the namespace the controller runs in", system.NamespaceEnvKey)
	}
	logger := logging.FromContext(ctx)

	nc, err := natsconn.Connect(o.NATS, "koffeeshop-controller", zapLogger{logger})
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	cfg := rest.CopyConfig(o.KubeConfig)
	if cfg.QPS == 0 {
		cfg.QPS = controllers * rest.DefaultQPS
	}
	if cfg.Burst == 0 {
		cfg.Burst = controllers * rest.DefaultBurst
	}
	ctx = injection.WithConfig(ctx, cfg)
	ctx, informers := injection.Default.SetupInformers(ctx, cfg)
	return run(ctx, informers, js, o)
}

// run starts the controllers on the clients and informers in ctx (set up
// by Knative injection, real or fake) and blocks until ctx is done.
func run(ctx context.Context, informers []controller.Informer, js jetstream.JetStream, o Options) error {
	logger := logging.FromContext(ctx)
	ctx = leaderelection.WithStandardLeaderElectorBuilder(ctx, kubeclient.Get(ctx), o.LeaderElection.componentConfig())

	impls := []*controller.Impl{
		brokerreconciler.NewController(ctx, js, o.Broker),
		triggerreconciler.NewController(ctx, js, triggerreconciler.Options{NATSTimeout: o.Broker.NATSTimeout}),
	}

	logger.Info("Starting informers")
	if err := controller.StartInformers(ctx.Done(), informers...); err != nil {
		return fmt.Errorf("start informers: %w", err)
	}

	eg, egCtx := errgroup.WithContext(ctx)
	if o.ProbePort > 0 {
		eg.Go(func() error { return injection.ServeHealthProbes(egCtx, o.ProbePort) })
	}
	logger.Info("Starting controllers")
	eg.Go(func() error { return controller.StartAll(egCtx, impls...) })
	return eg.Wait()
}

// zapLogger tells natsconn's connection news to the control plane's zap
// logger, which Knative's injection and reconcilers share.
type zapLogger struct{ l *zap.SugaredLogger }

func (z zapLogger) Info(msg string, kv ...any) { z.l.Infow(msg, kv...) }
func (z zapLogger) Warn(msg string, kv ...any) { z.l.Warnw(msg, kv...) }
