package broker_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/local/natsd"
)

type testBroker struct {
	url     string
	natsURL string
	ref     broker.Ref
	js      jetstream.JetStream
	stream  jetstream.Stream
	store   *broker.Store
}

// startBroker runs an embedded JetStream and the ingress for default/default
// on loopback.
func startBroker(tb testing.TB) *testBroker {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	srv, err := natsd.Start(natsd.Options{StoreDir: tb.TempDir(), Port: -1}, log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	ref := broker.Ref{Namespace: "default", Name: "default"}
	st, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	store, err := broker.NewStore(nc, log, 0)
	if err != nil {
		tb.Fatal(err)
	}
	in := broker.NewIngress(store, broker.NewBrokerSet(ref), log, broker.IngressOptions{})
	hs := httptest.NewServer(in)
	tb.Cleanup(hs.Close)
	return &testBroker{url: hs.URL, natsURL: srv.ClientURL(), ref: ref, js: js, stream: st, store: store}
}
