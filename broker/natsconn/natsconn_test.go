package natsconn

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

func TestRegisterFlags(t *testing.T) {
	env := map[string]string{"NATS_URL": "nats://from-env:4222", "NATS_CREDS": "/secret/user.creds", "NATS_CA": "/secret/ca.crt"}
	var o Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.RegisterFlags(fs, func(k string) string { return env[k] })
	if err := fs.Parse([]string{"-nats-ca", "/flag/ca.crt", "-nats-cert", "/secret/tls.crt", "-nats-key", "/secret/tls.key"}); err != nil {
		t.Fatal(err)
	}
	want := Options{URL: "nats://from-env:4222", CredsFile: "/secret/user.creds", CAFile: "/flag/ca.crt", CertFile: "/secret/tls.crt", KeyFile: "/secret/tls.key"}
	if o != want {
		t.Errorf("options = %+v, want %+v (the environment, then flags over it)", o, want)
	}

	var d Options
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	d.RegisterFlags(fs, func(string) string { return "" })
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if d.URL != DefaultURL {
		t.Errorf("default URL = %q, want %q", d.URL, DefaultURL)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{}, "NATS URL is required"},
		{Options{URL: "nats://x:4222", CertFile: "tls.crt"}, "both its certificate and its key"},
		{Options{URL: "nats://x:4222", KeyFile: "tls.key"}, "both its certificate and its key"},
		{Options{URL: "nats://x:4222", CertFile: "tls.crt", KeyFile: "tls.key"}, ""},
	} {
		err := tc.o.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
	if _, err := Connect(Options{URL: "nats://127.0.0.1:4222", CAFile: "/nonexistent/ca.crt"}, "test", slog.New(slog.DiscardHandler)); err == nil ||
		!strings.Contains(err.Error(), "connect to NATS") {
		t.Errorf("Connect with a CA file that is not there = %v", err)
	}
}

// A NATS that comes later is no error: the connection retries until it is
// there. Drain then closes it.
func TestConnectLaterAndDrain(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	nc, err := Connect(Options{URL: "nats://127.0.0.1:" + strconv.Itoa(port)}, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Connect before NATS is up: %v", err)
	}
	defer nc.Close()
	if nc.IsConnected() {
		t.Fatal("connected to a NATS that is not there")
	}
	testkit.StartNATS(t, testkit.Port(port))
	testkit.WaitFor(t, 30*time.Second, "connected after NATS came up", nc.IsConnected)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Drain(ctx, nc); err != nil {
		t.Fatal(err)
	}
	if !nc.IsClosed() {
		t.Error("connection not closed after Drain")
	}
	if err := Drain(ctx, nc); err != nil {
		t.Errorf("Drain of a closed connection = %v", err)
	}
}
