// Command controller runs the control plane of the KoffeeshopJetStream
// Broker class: it keeps a JetStream stream for each Broker annotated
// eventing.knative.dev/broker.class: KoffeeshopJetStream and a durable
// consumer for each Trigger on one.
//
// Every flag can also be set through the environment variable in its
// usage text, which suits a Deployment whose NATS files are mounted from
// a Secret.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/system"

	"github.com/koffeeshop/koffeeshop/broker/controlplane"
	"github.com/koffeeshop/koffeeshop/broker/envflag"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "controller:", err)
		}
		os.Exit(2)
	}
}

// config is what the command line and the environment say.
type config struct {
	opts       controlplane.Options
	kubeconfig string
	server     string
	namespace  string
	verbose    bool
}

// parse reads args over the environment getenv gives.
func parse(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	f := envflag.New("controller", getenv, stderr)
	f.String(&c.kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; in a pod, the pod's service account is used")
	f.String(&c.server, "server", "KUBE_SERVER", "", "Kubernetes API server address, overriding the kubeconfig's")
	f.String(&c.namespace, "namespace", system.NamespaceEnvKey, "", "namespace the controller runs in, where its leader election leases are (default: the pod's)")
	c.opts.NATS.RegisterFlags(f.Flags(), getenv)
	f.String(&c.opts.Broker.IngressName, "ingress-name", "INGRESS_SERVICE_NAME", brokerreconciler.DefaultIngressName, "Service of the shared Broker ingress")
	f.String(&c.opts.Broker.IngressNamespace, "ingress-namespace", "INGRESS_NAMESPACE", brokerreconciler.DefaultIngressNamespace, "namespace of the Broker ingress Service")
	f.Duration(&c.opts.Broker.NATSTimeout, "nats-timeout", "NATS_TIMEOUT", brokerreconciler.DefaultNATSTimeout, "bound on each JetStream API call")
	f.Duration(&c.opts.LeaderElection.LeaseDuration, "lease-duration", "LEASE_DURATION", 60*time.Second, "leader election lease duration")
	f.Duration(&c.opts.LeaderElection.RenewDeadline, "renew-deadline", "RENEW_DEADLINE", 40*time.Second, "leader election renew deadline")
	f.Duration(&c.opts.LeaderElection.RetryPeriod, "retry-period", "RETRY_PERIOD", 10*time.Second, "leader election retry period")
	f.Flags().IntVar(&c.opts.ProbePort, "probe-port", injection.HealthCheckDefaultPort, "port of /health and /readiness (0: none)")
	f.Flags().BoolVar(&c.verbose, "v", false, "debug logs")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	if c.namespace == placeholderNamespace {
		c.namespace = ""
	}
	return c, nil
}

// placeholderNamespace is what SYSTEM_NAMESPACE holds when nobody set it:
// knative.dev/eventing's messaging/v1 API package imports
// knative.dev/pkg/system/testing, whose init sets it for tests. Leases
// there would land in a namespace that does not exist.
const placeholderNamespace = "knative-testing"

// podNamespaceFile is where Kubernetes mounts the pod's namespace.
const podNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// namespace is the namespace the controller runs in: the flag or the
// environment's, else the pod's.
func (c config) namespaceOrPods(readFile func(string) ([]byte, error)) (string, error) {
	if c.namespace != "" {
		return c.namespace, nil
	}
	b, err := readFile(podNamespaceFile)
	if ns := strings.TrimSpace(string(b)); err == nil && ns != "" {
		return ns, nil
	}
	return "", fmt.Errorf("-namespace (or $%s) is required outside a pod", system.NamespaceEnvKey)
}

func run(args []string, getenv func(string) string, stderr io.Writer) error {
	c, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	ns, err := c.namespaceOrPods(os.ReadFile)
	if err != nil {
		return err
	}
	// Knative's leader election reads the namespace from the
	// environment.
	if err := os.Setenv(system.NamespaceEnvKey, ns); err != nil {
		return err
	}
	c.opts.KubeConfig, err = injection.GetRESTConfig(c.server, c.kubeconfig)
	if err != nil {
		return err
	}

	zc := zap.NewProductionConfig()
	if c.verbose {
		zc.Level = zap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	logger, err := zc.Build()
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	log := logger.Sugar().Named("koffeeshop-controller")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logging.WithLogger(ctx, log)

	log.Infow("Starting", "broker-class", brokerreconciler.ClassName, "nats", c.opts.NATS.URL, "namespace", ns)
	if err := controlplane.Run(ctx, c.opts); err != nil {
		log.Errorw("Stopped", zap.Error(err))
		return err
	}
	log.Info("Stopped")
	return nil
}
