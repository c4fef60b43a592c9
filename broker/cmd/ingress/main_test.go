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
		if o.Addr != ":8080" || o.ProbeAddr != ":9090" || o.MaxBodyBytes != 1<<20 || o.Token != "" {
			t.Errorf("addr, probe addr, max body, token = %q, %q, %d, %q", o.Addr, o.ProbeAddr, o.MaxBodyBytes, o.Token)
		}
		if o.PublishTimeout != 5*time.Second || o.DrainDelay != 5*time.Second || o.ShutdownTimeout != 20*time.Second {
			t.Errorf("publish timeout, drain delay, shutdown timeout = %v, %v, %v", o.PublishTimeout, o.DrainDelay, o.ShutdownTimeout)
		}
		if o.NATS.URL != "nats://nats.nats-io.svc.cluster.local:4222" {
			t.Errorf("NATS URL = %q", o.NATS.URL)
		}
	})

	t.Run("the environment, then flags over it", func(t *testing.T) {
		c, err := parse([]string{"-nats-url", "tls://nats:4222", "-addr", ":8181", "-drain-delay", "0s"}, env(map[string]string{
			"NATS_URL": "nats://ignored:4222", "NATS_CREDS": "/secret/user.creds", "NATS_CA": "/secret/ca.crt",
			"NATS_CERT": "/secret/tls.crt", "NATS_KEY": "/secret/tls.key", "INGRESS_ADDR": ":1", "PROBE_ADDR": ":9191",
			"MAX_BODY_BYTES": "4096", "PUBLISH_TIMEOUT": "2s", "DRAIN_DELAY": "9s", "INGRESS_TOKEN": "s3cret",
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
		if o.Addr != ":8181" || o.ProbeAddr != ":9191" || o.MaxBodyBytes != 4096 || o.PublishTimeout != 2*time.Second ||
			o.DrainDelay != 0 || o.Token != "s3cret" {
			t.Errorf("options = %+v", o)
		}
	})

	t.Run("bad values in the environment", func(t *testing.T) {
		for k, v := range map[string]string{"SHUTDOWN_TIMEOUT": "soon", "MAX_BODY_BYTES": "1MiB"} {
			if _, err := parse(nil, env(map[string]string{k: v}), io.Discard); err == nil || !strings.Contains(err.Error(), "$"+k) {
				t.Errorf("%s=%s: error = %v, want one naming $%s", k, v, err, k)
			}
		}
	})

	t.Run("the token is no flag", func(t *testing.T) {
		if _, err := parse([]string{"-token", "x"}, env(nil), io.Discard); err == nil {
			t.Error("-token accepted: a token on the command line shows in the process list")
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
