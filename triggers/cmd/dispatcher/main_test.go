package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

	t.Run("defaults", func(t *testing.T) {
		c, err := parse(nil, env(nil), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		o := c.opts
		if o.ProbeAddr != ":9090" || o.DrainTimeout != 30*time.Second || o.PublishTimeout != 5*time.Second || o.ShutdownTimeout != 10*time.Second {
			t.Errorf("probe addr, drain, publish, shutdown = %q, %v, %v, %v", o.ProbeAddr, o.DrainTimeout, o.PublishTimeout, o.ShutdownTimeout)
		}
		if o.NATS.URL != "nats://nats.nats-io.svc.cluster.local:4222" {
			t.Errorf("NATS URL = %q", o.NATS.URL)
		}
	})

	t.Run("the environment, then flags over it", func(t *testing.T) {
		c, err := parse([]string{"-nats-url", "tls://nats:4222", "-drain-timeout", "1m"}, env(map[string]string{
			"NATS_URL": "nats://ignored:4222", "NATS_CREDS": "/secret/user.creds", "NATS_CA": "/secret/ca.crt",
			"NATS_CERT": "/secret/tls.crt", "NATS_KEY": "/secret/tls.key", "PROBE_ADDR": ":9191",
			"DRAIN_TIMEOUT": "5s", "PUBLISH_TIMEOUT": "2s", "KUBE_SERVER": "https://kube:6443",
		}), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		n := c.opts.NATS
		if n.URL != "tls://nats:4222" || n.CredsFile != "/secret/user.creds" || n.CAFile != "/secret/ca.crt" ||
			n.CertFile != "/secret/tls.crt" || n.KeyFile != "/secret/tls.key" {
			t.Errorf("NATS options = %+v", n)
		}
		o := c.opts
		if o.ProbeAddr != ":9191" || o.DrainTimeout != time.Minute || o.PublishTimeout != 2*time.Second || c.flags.Server != "https://kube:6443" {
			t.Errorf("options = %+v, server %q", o, c.flags.Server)
		}
	})

	t.Run("a bad duration in the environment", func(t *testing.T) {
		if _, err := parse(nil, env(map[string]string{"DRAIN_TIMEOUT": "a while"}), io.Discard); err == nil || !strings.Contains(err.Error(), "$DRAIN_TIMEOUT") {
			t.Errorf("error = %v, want one naming $DRAIN_TIMEOUT", err)
		}
	})

	t.Run("help and stray arguments", func(t *testing.T) {
		var out strings.Builder
		if _, err := parse([]string{"-h"}, env(nil), &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "$NATS_CREDS") {
			t.Errorf("-h = %v, usage %q", err, out.String())
		}
		if _, err := parse([]string{"extra"}, env(nil), io.Discard); err == nil {
			t.Error("no error")
		}
	})
}
