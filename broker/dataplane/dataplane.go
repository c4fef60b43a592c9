// Package dataplane is what the data-plane processes of the
// KoffeeshopJetStream Broker class, the Broker ingress and the Trigger
// dispatcher, share: how their command starts (the API server's flags,
// JSON logs, signals, tracing) and what they serve from (the eventing API,
// NATS and the listener of their operations port).
package dataplane

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/client-go/rest"
	"knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/pkg/injection"

	"github.com/koffeeshop/koffeeshop/broker/envflag"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// Main runs a command's run on the process's arguments, environment and
// stderr. An error ends the process with status 2, printed after name
// unless it is -h's (the usage is printed already).
func Main(name string, run func(args []string, getenv func(string) string, stderr io.Writer) error) {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, name+":", err)
		}
		os.Exit(2)
	}
}

// Flags are the settings every data-plane command has besides its own.
type Flags struct {
	// KubeConfig is a kubeconfig file and Server overrides its API server
	// address; both empty, the pod's service account is used.
	KubeConfig string
	Server     string
	// Verbose turns debug logs on.
	Verbose bool
}

// Register adds -kubeconfig, -server and -v to f.
func (fl *Flags) Register(f *envflag.FlagSet) {
	f.String(&fl.KubeConfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; in a pod, the pod's service account is used")
	f.String(&fl.Server, "server", "KUBE_SERVER", "", "Kubernetes API server address, overriding the kubeconfig's")
	f.Flags().BoolVar(&fl.Verbose, "v", false, "debug logs")
}

// Process is what a started command serves with.
type Process struct {
	// Log writes JSON to the command's stderr.
	Log *slog.Logger
	// KubeConfig reaches the API server as the command's Flags say.
	KubeConfig *rest.Config
	// Tracer is the provider the OTEL_* environment asks for.
	Tracer trace.TracerProvider
}

// Run starts the command called logger (its logger's name, its user agent
// on the API server and its tracing service name) as fl says, then serves
// until SIGINT or SIGTERM ends ctx and serve returns. The spans left are
// exported before Run returns.
func Run(fl Flags, logger string, stderr io.Writer, serve func(ctx context.Context, p Process) error) error {
	level := slog.LevelInfo
	if fl.Verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("logger", logger)
	kube, err := injection.GetRESTConfig(fl.Server, fl.KubeConfig)
	if err != nil {
		return err
	}
	kube.UserAgent = logger

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tr, stopTracing, err := tracing.ForProcess(ctx, log, logger)
	if err != nil {
		return err
	}
	defer stopTracing()
	if err := serve(ctx, Process{Log: log, KubeConfig: kube, Tracer: tr.Provider()}); err != nil {
		log.Error("Stopped", "error", err)
		return err
	}
	return nil
}

// Conn is what a data-plane process serves from.
type Conn struct {
	// Eventing reads the Brokers and Triggers.
	Eventing versioned.Interface
	// NATS holds the Brokers' streams and the Triggers' consumers.
	NATS *nats.Conn
	// Probes is the listener of the operations port (ops.Serve).
	Probes net.Listener
}

// Dial checks kube and no, makes the eventing client, listens on
// probeAddr (ops.DefaultAddr when empty) and connects to NATS as the
// client name, telling log (slog.Default() when nil) of its comings and
// goings. An API server or a
// NATS that cannot be reached is no error: the process is unready until
// they can be. Close releases what Dial made.
func Dial(kube *rest.Config, no natsconn.Options, probeAddr, name string, log *slog.Logger) (_ *Conn, err error) {
	if kube == nil {
		return nil, errors.New("a Kubernetes REST config is required")
	}
	if err := no.Validate(); err != nil {
		return nil, err
	}
	if probeAddr == "" {
		probeAddr = ops.DefaultAddr
	}
	if log == nil {
		log = slog.Default()
	}
	c := &Conn{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.Eventing, err = versioned.NewForConfig(kube); err != nil {
		return nil, fmt.Errorf("eventing client: %w", err)
	}
	if c.Probes, err = net.Listen("tcp", probeAddr); err != nil {
		return nil, fmt.Errorf("probes: %w", err)
	}
	if c.NATS, err = natsconn.Connect(no, name, log); err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the NATS connection (a process drains it first) and the
// probes' listener.
func (c *Conn) Close() {
	if c.NATS != nil {
		c.NATS.Close()
	}
	if c.Probes != nil {
		_ = c.Probes.Close()
	}
}
