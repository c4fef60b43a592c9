package testkit

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATS is a nats-server with JetStream running inside the test process.
type NATS struct {
	srv *server.Server
}

// RunNATS starts a server on 127.0.0.1, on a free port, with its JetStream
// store in storeDir; opts change the server's options before it starts.
// It is for a TestMain, which has no testing.TB; a test calls StartNATS.
func RunNATS(storeDir string, opts ...func(*server.Options)) (*NATS, error) {
	o := &server.Options{
		Host:                   "127.0.0.1",
		Port:                   server.RANDOM_PORT,
		JetStream:              true,
		StoreDir:               storeDir,
		NoSigs:                 true,
		DisableJetStreamBanner: true,
		// As the local runner's server: an event the ingress takes (up to
		// its 1 MiB body limit, plus headers) fits in a message.
		MaxPayload: 8 << 20,
	}
	for _, opt := range opts {
		opt(o)
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("nats-server options: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats-server did not start (store %s)", storeDir)
	}
	return &NATS{srv: srv}, nil
}

// StartNATS runs a server for the test, with its store in the test's
// temporary directory, and shuts it down when the test ends.
func StartNATS(tb testing.TB, opts ...func(*server.Options)) *NATS {
	tb.Helper()
	n, err := RunNATS(tb.TempDir(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Shutdown)
	return n
}

// Port makes the server listen on port, one that a test has set aside
// for a server started later than its clients.
func Port(port int) func(*server.Options) {
	return func(o *server.Options) { o.Port = port }
}

// ClientURL is the URL clients connect to.
func (n *NATS) ClientURL() string { return n.srv.ClientURL() }

// Shutdown stops the server and waits until it has stopped. It may be
// called again.
func (n *NATS) Shutdown() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// Connect returns a JetStream context on a connection to url, closed when
// the test ends; opts are the connection's (its Conn() is the
// connection).
func Connect(tb testing.TB, url string, opts ...nats.Option) jetstream.JetStream {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatalf("connect to NATS at %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("JetStream context: %v", err)
	}
	return js
}

// JetStream starts a server for the test and connects to it.
func JetStream(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	return Connect(tb, StartNATS(tb).ClientURL())
}
