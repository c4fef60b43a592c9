// Package natsconn connects the processes of the KoffeeshopJetStream Broker
// class (the controller, the ingress and the dispatcher) to NATS, with the
// credentials and TLS files a Secret mounts, so that all three read the
// same flags and environment and behave alike while NATS is away.
package natsconn

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/koffeeshop/koffeeshop/broker/envflag"
)

// DefaultURL is the NATS of the deployment the config/ manifests describe.
const DefaultURL = "nats://nats.nats-io.svc.cluster.local:4222"

// Options say how to reach NATS. The files are meant to be mounted from a
// Secret.
type Options struct {
	// URL of the NATS server or cluster (comma-separated URLs).
	URL string
	// CredsFile is a NATS credentials file (a user JWT and NKey seed).
	CredsFile string
	// CAFile is the CA that signs the server's certificate.
	CAFile string
	// CertFile and KeyFile are a client certificate, for mutual TLS.
	CertFile string
	KeyFile  string
}

// Validate catches what nats.Connect would report less clearly, or, as
// Connect retries a failed first connection, not at all.
func (o Options) Validate() error {
	if o.URL == "" {
		return errors.New("a NATS URL is required")
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("a NATS client certificate needs both its certificate and its key file")
	}
	return nil
}

// RegisterFlags adds -nats-url, -nats-creds, -nats-ca, -nats-cert and
// -nats-key to fs, each defaulting to its environment variable (NATS_URL,
// NATS_CREDS, NATS_CA, NATS_CERT, NATS_KEY) as getenv reads it.
func (o *Options) RegisterFlags(fs *flag.FlagSet, getenv func(string) string) {
	f := envflag.Wrap(fs, getenv)
	f.String(&o.URL, "nats-url", "NATS_URL", DefaultURL, "NATS server URL(s), comma-separated")
	f.String(&o.CredsFile, "nats-creds", "NATS_CREDS", "", "NATS credentials file (user JWT and NKey seed)")
	f.String(&o.CAFile, "nats-ca", "NATS_CA", "", "CA certificate that signs the NATS server's")
	f.String(&o.CertFile, "nats-cert", "NATS_CERT", "", "client certificate for mutual TLS to NATS")
	f.String(&o.KeyFile, "nats-key", "NATS_KEY", "", "client key for mutual TLS to NATS")
}

// Logger is told about the connection coming and going; *slog.Logger is
// one.
type Logger interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
}

// Connect connects to NATS under the client name name. A NATS that is not
// there yet is no error: the connection keeps retrying, for ever, and the
// caller reports it (a condition, a failing readiness probe). Nothing is
// buffered while disconnected, so a publish or a JetStream call then fails
// at once (the ingress answers 503, a reconcile is retried) instead of
// waiting out its timeout. The extra options come last, so they win.
func Connect(o Options, name string, log Logger, extra ...nats.Option) (*nats.Conn, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(func(nc *nats.Conn) { log.Info("Connected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("Reconnected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("Disconnected from NATS", "error", err)
			}
		}),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", o.URL, err)
	}
	return nc, nil
}

// Drain drains nc (its subscriptions finish what they hold, then its
// pending publishes are flushed) and waits until it is closed, or ctx is
// done, which closes it at once.
func Drain(ctx context.Context, nc *nats.Conn) error {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		// Already closed, or never connected: nothing is left to drain.
		nc.Close()
		return nil
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		nc.Close()
		return fmt.Errorf("drain NATS connection: %w", ctx.Err())
	}
}

// Connected is nc's part of a readiness probe: nil while nc is connected,
// else its status, as the reason the process can take no work.
func Connected(nc *nats.Conn) error {
	if !nc.IsConnected() {
		return fmt.Errorf("NATS is %s", nc.Status())
	}
	return nil
}
