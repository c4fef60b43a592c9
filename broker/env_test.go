package broker_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
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
	srv := testkit.StartNATS(tb)
	js := testkit.Connect(tb, srv.ClientURL())
	ref := broker.Ref{Namespace: "default", Name: "default"}
	st, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	store, err := broker.NewStore(js.Conn(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	in := broker.NewIngress(store, broker.NewBrokerSet(ref), log, broker.IngressOptions{})
	hs := httptest.NewServer(in)
	tb.Cleanup(hs.Close)
	return &testBroker{url: hs.URL, natsURL: srv.ClientURL(), ref: ref, js: js, stream: st, store: store}
}
