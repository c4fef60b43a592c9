package dataplane

import (
	"io"
	"strings"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/koffeeshop/koffeeshop/broker/envflag"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
)

func TestFlags(t *testing.T) {
	env := map[string]string{"KUBECONFIG": "/home/ada/.kube/config", "KUBE_SERVER": "https://ignored:6443"}
	var fl Flags
	f := envflag.New("test", func(k string) string { return env[k] }, io.Discard)
	fl.Register(f)
	if err := f.Parse([]string{"-server", "https://kube:6443", "-v"}); err != nil {
		t.Fatal(err)
	}
	want := Flags{KubeConfig: "/home/ada/.kube/config", Server: "https://kube:6443", Verbose: true}
	if fl != want {
		t.Errorf("flags = %+v, want %+v (the environment, then flags over it)", fl, want)
	}
}

// Dial refuses what it cannot work with before it opens anything.
func TestDialChecks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kube  *rest.Config
		nats  natsconn.Options
		probe string
		want  string
	}{
		{"no REST config", nil, natsconn.Options{URL: "nats://127.0.0.1:4222"}, "127.0.0.1:0", "REST config is required"},
		{"no NATS URL", &rest.Config{Host: "http://127.0.0.1:1"}, natsconn.Options{}, "127.0.0.1:0", "NATS URL is required"},
		{"a bad probe address", &rest.Config{Host: "http://127.0.0.1:1"}, natsconn.Options{URL: "nats://127.0.0.1:4222"}, "127.0.0.1:-1", "probes:"},
	} {
		if c, err := Dial(tc.kube, tc.nats, tc.probe, "test", nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			if c != nil {
				c.Close()
			}
			t.Errorf("%s: Dial = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
