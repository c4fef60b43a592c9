// Command ingress is the shared HTTP ingress of every Broker of the
// KoffeeshopJetStream class: POST /<namespace>/<broker> stores the event in
// the Broker's JetStream stream before it answers 202. It serves the
// Brokers of the class that the controller made Ready, as the API server
// says.
//
// Every flag can also be set through the environment variable in its
// usage text, which suits a Deployment whose NATS files are mounted from
// a Secret. The bearer token is read from $INGRESS_TOKEN only, so that it
// shows in no process list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"knative.dev/pkg/injection"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/clusteringress"
	"github.com/koffeeshop/koffeeshop/broker/envflag"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ingress:", err)
		}
		os.Exit(2)
	}
}

// config is what the command line and the environment say.
type config struct {
	opts       clusteringress.Options
	kubeconfig string
	server     string
	verbose    bool
}

// tokenEnv holds the optional bearer token.
const tokenEnv = "INGRESS_TOKEN"

// parse reads args over the environment getenv gives.
func parse(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	f := envflag.New("ingress", getenv, stderr)
	f.String(&c.kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; in a pod, the pod's service account is used")
	f.String(&c.server, "server", "KUBE_SERVER", "", "Kubernetes API server address, overriding the kubeconfig's")
	c.opts.NATS.RegisterFlags(f.Flags(), getenv)
	f.String(&c.opts.Addr, "addr", "INGRESS_ADDR", clusteringress.DefaultAddr, "address of POST /<namespace>/<broker>")
	f.String(&c.opts.ProbeAddr, "probe-addr", "PROBE_ADDR", ops.DefaultAddr, "address of "+ops.ReadinessPath+", "+ops.LivenessPath+" and "+ops.MetricsPath)
	f.Bytes(&c.opts.MaxBodyBytes, "max-body-bytes", "MAX_BODY_BYTES", broker.DefaultMaxBodyBytes, "largest request body; larger ones get 413")
	f.Duration(&c.opts.PublishTimeout, "publish-timeout", "PUBLISH_TIMEOUT", broker.DefaultPublishTimeout, "bound on the wait for JetStream to store an event (then 503)")
	f.Duration(&c.opts.DrainDelay, "drain-delay", "DRAIN_DELAY", 5*time.Second, "on SIGTERM, how long to keep serving while unready, so the Service's endpoints drop this pod first")
	f.Duration(&c.opts.ShutdownTimeout, "shutdown-timeout", "SHUTDOWN_TIMEOUT", 20*time.Second, "then, bound on the wait for requests in flight and the NATS drain")
	f.Flags().BoolVar(&c.verbose, "v", false, "debug logs")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	c.opts.Token = getenv(tokenEnv)
	return c, nil
}

func run(args []string, getenv func(string) string, stderr io.Writer) error {
	c, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("logger", "koffeeshop-broker-ingress")
	c.opts.Log = log
	c.opts.KubeConfig, err = injection.GetRESTConfig(c.server, c.kubeconfig)
	if err != nil {
		return err
	}
	c.opts.KubeConfig.UserAgent = "koffeeshop-broker-ingress"

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("Starting", "nats", c.opts.NATS.URL, "addr", c.opts.Addr, "probeAddr", c.opts.ProbeAddr, "token", c.opts.Token != "")
	tr, stopTracing, err := tracing.ForProcess(ctx, log, "koffeeshop-broker-ingress")
	if err != nil {
		return err
	}
	defer stopTracing()
	c.opts.Tracer = tr.Provider()
	if err := clusteringress.Run(ctx, c.opts); err != nil {
		log.Error("Stopped", "error", err)
		return err
	}
	return nil
}
