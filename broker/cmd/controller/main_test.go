package main

import (
	"io"
	"io/fs"
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
		if o.Broker.IngressName != "koffeeshop-broker-ingress" || o.Broker.IngressNamespace != "koffeeshop-system" {
			t.Errorf("ingress = %s.%s, want koffeeshop-broker-ingress.koffeeshop-system", o.Broker.IngressName, o.Broker.IngressNamespace)
		}
		if o.Broker.NATSTimeout != 10*time.Second || o.ProbePort != 8080 || o.LeaderElection.LeaseDuration != time.Minute {
			t.Errorf("nats timeout, probe port, lease = %v, %d, %v", o.Broker.NATSTimeout, o.ProbePort, o.LeaderElection.LeaseDuration)
		}
	})

	t.Run("the environment, then flags over it", func(t *testing.T) {
		c, err := parse([]string{"-nats-url", "tls://nats:4222", "-ingress-namespace", "shop"}, env(map[string]string{
			"NATS_URL": "nats://ignored:4222", "NATS_CREDS": "/secret/user.creds", "NATS_CA": "/secret/ca.crt",
			"NATS_CERT": "/secret/tls.crt", "NATS_KEY": "/secret/tls.key", "NATS_TIMEOUT": "3s",
			"INGRESS_NAMESPACE": "ignored", "SYSTEM_NAMESPACE": "koffeeshop-system",
		}), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		n := c.opts.NATS
		if n.URL != "tls://nats:4222" || n.CredsFile != "/secret/user.creds" || n.CAFile != "/secret/ca.crt" ||
			n.CertFile != "/secret/tls.crt" || n.KeyFile != "/secret/tls.key" {
			t.Errorf("NATS options = %+v", n)
		}
		if c.opts.Broker.NATSTimeout != 3*time.Second || c.opts.Broker.IngressNamespace != "shop" || c.namespace != "koffeeshop-system" {
			t.Errorf("timeout, ingress namespace, namespace = %v, %s, %s", c.opts.Broker.NATSTimeout, c.opts.Broker.IngressNamespace, c.namespace)
		}
	})

	t.Run("a bad duration in the environment", func(t *testing.T) {
		if _, err := parse(nil, env(map[string]string{"LEASE_DURATION": "a minute"}), io.Discard); err == nil || !strings.Contains(err.Error(), "$LEASE_DURATION") {
			t.Errorf("error = %v, want one naming $LEASE_DURATION", err)
		}
	})

	t.Run("stray arguments", func(t *testing.T) {
		if _, err := parse([]string{"extra"}, env(nil), io.Discard); err == nil {
			t.Error("no error")
		}
	})
}

func TestNamespace(t *testing.T) {
	pod := func(ns string) func(string) ([]byte, error) {
		return func(name string) ([]byte, error) {
			if name != podNamespaceFile || ns == "" {
				return nil, fs.ErrNotExist
			}
			return []byte(ns + "\n"), nil
		}
	}
	env := func(ns string) func(string) string {
		return func(k string) string {
			if k == "SYSTEM_NAMESPACE" {
				return ns
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name, env, pod, want string
	}{
		{"from the environment", "shop", "ignored", "shop"},
		{"the pod's", "", "koffeeshop-system", "koffeeshop-system"},
		{"the testing placeholder is no choice", placeholderNamespace, "koffeeshop-system", "koffeeshop-system"},
		{"none outside a pod", placeholderNamespace, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(nil, env(tc.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.namespaceOrPods(pod(tc.pod))
			if tc.want == "" {
				if err == nil {
					t.Fatalf("namespace %q, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("namespace = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
