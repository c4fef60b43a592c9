// Command dispatcher delivers the events of every Trigger on a Broker of
// the KoffeeshopJetStream class, by Knative's delivery rules, from the
// durable consumer the controller made for it. It follows the Triggers on
// the API server: a Trigger that becomes Ready, changes or goes is
// started, replaced or stopped without a restart. Replicas share each
// consumer.
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
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"knative.dev/pkg/injection"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/envflag"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/triggers/fleet"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "dispatcher:", err)
		}
		os.Exit(2)
	}
}

// config is what the command line and the environment say.
type config struct {
	opts       fleet.Options
	kubeconfig string
	server     string
	verbose    bool
}

// parse reads args over the environment getenv gives.
func parse(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	f := envflag.New("dispatcher", getenv, stderr)
	f.String(&c.kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; in a pod, the pod's service account is used")
	f.String(&c.server, "server", "KUBE_SERVER", "", "Kubernetes API server address, overriding the kubeconfig's")
	c.opts.NATS.RegisterFlags(f.Flags(), getenv)
	f.String(&c.opts.ProbeAddr, "probe-addr", "PROBE_ADDR", ops.DefaultAddr, "address of "+ops.ReadinessPath+", "+ops.LivenessPath+" and "+ops.MetricsPath)
	f.Duration(&c.opts.DrainTimeout, "drain-timeout", "DRAIN_TIMEOUT", 30*time.Second, "on SIGTERM or a Trigger's change, how long deliveries in flight may finish before they are handed back to JetStream")
	f.Duration(&c.opts.PublishTimeout, "publish-timeout", "PUBLISH_TIMEOUT", broker.DefaultPublishTimeout, "bound on the wait for JetStream to store a reply")
	f.Duration(&c.opts.ShutdownTimeout, "shutdown-timeout", "SHUTDOWN_TIMEOUT", 10*time.Second, "then, bound on the NATS drain")
	f.Flags().BoolVar(&c.verbose, "v", false, "debug logs")
	if err := f.Parse(args); err != nil {
		return c, err
	}
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
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("logger", "koffeeshop-trigger-dispatcher")
	c.opts.Log = log
	c.opts.KubeConfig, err = injection.GetRESTConfig(c.server, c.kubeconfig)
	if err != nil {
		return err
	}
	c.opts.KubeConfig.UserAgent = "koffeeshop-trigger-dispatcher"

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("Starting", "nats", c.opts.NATS.URL, "probeAddr", c.opts.ProbeAddr, "drainTimeout", c.opts.DrainTimeout)
	tr, stopTracing, err := tracing.ForProcess(ctx, log, "koffeeshop-trigger-dispatcher")
	if err != nil {
		return err
	}
	defer stopTracing()
	c.opts.Tracer = tr.Provider()
	if err := fleet.Run(ctx, c.opts); err != nil {
		log.Error("Stopped", "error", err)
		return err
	}
	return nil
}
