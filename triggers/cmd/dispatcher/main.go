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
	"io"
	"time"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/dataplane"
	"github.com/koffeeshop/koffeeshop/broker/envflag"
	"github.com/koffeeshop/koffeeshop/broker/ops"
	"github.com/koffeeshop/koffeeshop/triggers/fleet"
)

func main() { dataplane.Main("dispatcher", run) }

// config is what the command line and the environment say.
type config struct {
	opts  fleet.Options
	flags dataplane.Flags
}

// parse reads args over the environment getenv gives.
func parse(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	f := envflag.New("dispatcher", getenv, stderr)
	c.flags.Register(f)
	c.opts.NATS.RegisterFlags(f.Flags(), getenv)
	f.String(&c.opts.ProbeAddr, "probe-addr", "PROBE_ADDR", ops.DefaultAddr, "address of "+ops.ReadinessPath+", "+ops.LivenessPath+" and "+ops.MetricsPath)
	f.Duration(&c.opts.DrainTimeout, "drain-timeout", "DRAIN_TIMEOUT", 30*time.Second, "on SIGTERM or a Trigger's change, how long deliveries in flight may finish before they are handed back to JetStream")
	f.Duration(&c.opts.PublishTimeout, "publish-timeout", "PUBLISH_TIMEOUT", broker.DefaultPublishTimeout, "bound on the wait for JetStream to store a reply")
	f.Duration(&c.opts.ShutdownTimeout, "shutdown-timeout", "SHUTDOWN_TIMEOUT", 10*time.Second, "then, bound on the NATS drain")
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
	return dataplane.Run(c.flags, "koffeeshop-trigger-dispatcher", stderr, func(ctx context.Context, p dataplane.Process) error {
		c.opts.Log, c.opts.KubeConfig, c.opts.Tracer = p.Log, p.KubeConfig, p.Tracer
		p.Log.Info("Starting", "nats", c.opts.NATS.URL, "probeAddr", c.opts.ProbeAddr, "drainTimeout", c.opts.DrainTimeout)
		return fleet.Run(ctx, c.opts)
	})
}
