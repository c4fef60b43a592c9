package reconciler_test

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// natsEnv is a real JetStream: an embedded nats-server with its store in
// the test's temporary directory, and a client connected as the control
// plane connects (no buffering while disconnected, so a NATS that is down
// fails a call at once).
type natsEnv struct {
	srv *testkit.NATS
	js  jetstream.JetStream

	// before is a consumer as a row's setup left it.
	before *jetstream.ConsumerInfo
}

func startNATS(t *testing.T) *natsEnv {
	t.Helper()
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectBufSize(-1))
	return &natsEnv{srv: srv, js: js}
}

// stop shuts the server down and waits until the client has noticed.
func (e *natsEnv) stop(t *testing.T) {
	t.Helper()
	e.srv.Shutdown()
	testkit.WaitFor(t, 10*time.Second, "the client notices that NATS stopped", func() bool {
		return e.js.Conn().Status() != nats.CONNECTED
	})
}

// consumerInfo returns the consumer's info, or nil when it (or its
// stream) does not exist.
func (e *natsEnv) consumerInfo(t *testing.T, stream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("consumer %s on %s: %v", name, stream, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer %s info: %v", name, err)
	}
	return info
}

// consumerNames lists the consumers on the stream.
func (e *natsEnv) consumerNames(t *testing.T, stream string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	var names []string
	l := s.ConsumerNames(ctx)
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("list consumers: %v", err)
	}
	return names
}

// Keys of a TableRow's OtherTestData.
const (
	// setupKey holds a func(*testing.T, *natsEnv) run before the reconcile.
	setupKey = "setup"
	// envKey is where the factory leaves the row's *natsEnv for its
	// PostConditions.
	envKey = "nats"
)

// withEnv returns data with the row's NATS added, without touching the
// table's own map.
func withEnv(data map[string]any, e *natsEnv) map[string]any {
	data = maps.Clone(data)
	if data == nil {
		data = map[string]any{}
	}
	data[envKey] = e
	return data
}
