package controlplane

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// NATSOptions say how the control plane reaches NATS. The files are
// meant to be mounted from a Secret.
type NATSOptions struct {
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

// validate catches what nats.Connect would report less clearly, or, as
// it retries a failed first connection, not at all.
func (o NATSOptions) validate() error {
	if o.URL == "" {
		return errors.New("a NATS URL is required")
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("a NATS client certificate needs both its certificate and its key file")
	}
	return nil
}

// connect connects to NATS. A NATS that is not there yet is no error: the
// connection keeps retrying, and until it succeeds every Broker and
// Trigger says NATSUnavailable in its status, which is where an operator
// looks. Nothing is buffered while disconnected, so a JetStream call then
// fails at once (and its reconcile is retried with backoff) instead of
// waiting out its timeout.
func (o NATSOptions) connect(log *zap.SugaredLogger) (*nats.Conn, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name("koffeeshop-controller"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(func(nc *nats.Conn) { log.Infow("Connected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Infow("Reconnected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warnw("Disconnected from NATS", zap.Error(err))
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
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", o.URL, err)
	}
	return nc, nil
}
