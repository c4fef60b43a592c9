package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/local/natsd"
)

// jetStreamServer is an embedded JetStream server (local/natsd, as the
// runner embeds it) with a client connection opened as the runner opens
// its own.
type jetStreamServer struct {
	srv     *natsd.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	natsURL string
}

func (b *bench) startJetStream() (*jetStreamServer, error) {
	dir, err := os.MkdirTemp(b.tmp, "jetstream-")
	if err != nil {
		return nil, err
	}
	srv, err := natsd.Start(natsd.Options{StoreDir: dir, Port: -1}, b.log)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.Name("koffeeshop-local"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		srv.Shutdown()
		return nil, fmt.Errorf("connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		srv.Shutdown()
		return nil, err
	}
	return &jetStreamServer{srv: srv, nc: nc, js: js, natsURL: srv.ClientURL()}, nil
}

func (j *jetStreamServer) stop() {
	_ = j.nc.Drain()
	j.nc.Close()
	j.srv.Shutdown()
}

// ingressServer is the Broker ingress of the default Broker, put together
// as the runner puts it together, on a random loopback port.
type ingressServer struct {
	*jetStreamServer
	store    *broker.Store
	url      string
	stopHTTP func()
}

func (b *bench) startIngress(ctx context.Context) (*ingressServer, error) {
	j, err := b.startJetStream()
	if err != nil {
		return nil, err
	}
	if _, err := broker.EnsureStream(ctx, j.js, defaultBroker, broker.StreamOptions{}); err != nil {
		j.stop()
		return nil, err
	}
	store, err := broker.NewStore(j.nc, 0)
	if err != nil {
		j.stop()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/", broker.NewIngress(store, broker.NewBrokerSet(defaultBroker), b.log, broker.IngressOptions{}))
	url, stop, err := serveHTTP(mux)
	if err != nil {
		j.stop()
		return nil, err
	}
	return &ingressServer{jetStreamServer: j, store: store, url: url, stopHTTP: stop}, nil
}

func (in *ingressServer) stop() {
	in.stopHTTP()
	in.jetStreamServer.stop()
}

var errTimeout = errors.New("timed out")
