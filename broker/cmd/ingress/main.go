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
	"io"
	"time"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/clusteringress"
	"github.com/koffeeshop/koffeeshop/broker/dataplane"
	"github.com/koffeeshop/koffeeshop/broker/envflag"
	"github.com/koffeeshop/koffeeshop/broker/ops"
)

func main() { dataplane.Main("ingress", run) }

// config is what the command line and the environment say.
type config struct {
	opts  clusteringress.Options
	flags dataplane.Flags
}

// tokenEnv holds the optional bearer token.
const tokenEnv = "INGRESS_TOKEN"

// parse reads args over the environment getenv gives.
func parse(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	f := envflag.New("ingress", getenv, stderr)
	c.flags.Register(f)
	c.opts.NATS.RegisterFlags(f.Flags(), getenv)
	f.String(&c.opts.Addr, "addr", "INGRESS_ADDR", clusteringress.DefaultAddr, "address of POST /<namespace>/<broker>")
	f.String(&c.opts.ProbeAddr, "probe-addr", "PROBE_ADDR", ops.DefaultAddr, "address of "+ops.ReadinessPath+", "+ops.LivenessPath+" and "+ops.MetricsPath)
	f.Bytes(&c.opts.MaxBodyBytes, "max-body-bytes", "MAX_BODY_BYTES", broker.DefaultMaxBodyBytes, "largest request body; larger ones get 413")
	f.Duration(&c.opts.PublishTimeout, "publish-timeout", "PUBLISH_TIMEOUT", broker.DefaultPublishTimeout, "bound on the wait for JetStream to store an event (then 503)")
	f.Duration(&c.opts.DrainDelay, "drain-delay", "DRAIN_DELAY", 5*time.Second, "on SIGTERM, how long to keep serving while unready, so the Service's endpoints drop this pod first")
	f.Duration(&c.opts.ShutdownTimeout, "shutdown-timeout", "SHUTDOWN_TIMEOUT", 20*time.Second, "then, bound on the wait for requests in flight and the NATS drain")
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
	return dataplane.Run(c.flags, "koffeeshop-broker-ingress", stderr, func(ctx context.Context, p dataplane.Process) error {
		c.opts.Log, c.opts.KubeConfig, c.opts.Tracer = p.Log, p.KubeConfig, p.Tracer
		p.Log.Info("Starting", "nats", c.opts.NATS.URL, "addr", c.opts.Addr, "probeAddr", c.opts.ProbeAddr, "token", c.opts.Token != "")
		return clusteringress.Run(ctx, c.opts)
	})
}
