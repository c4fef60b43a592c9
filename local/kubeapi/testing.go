package kubeapi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// EnvAPIServer names the kube-apiserver binary; without it, the module's
// bin/kube-apiserver (`make kube-apiserver`) is used.
const EnvAPIServer = "KUBE_APISERVER"

// EnvRequire makes a missing binary fail a test instead of skipping it:
// `make test` sets it, having built kube-apiserver.
const EnvRequire = "KOFFEESHOP_REQUIRE_APISERVER"

// ForTest starts an API server with Knative's CRDs installed, for t, and
// stops it when t ends. Without kube-apiserver or etcd on the machine it
// skips t, or fails it when EnvRequire is set.
func ForTest(t testing.TB) *Server {
	t.Helper()
	bin := os.Getenv(EnvAPIServer)
	if bin == "" {
		if root, err := moduleRoot(); err == nil {
			bin = filepath.Join(root, "bin", "kube-apiserver")
		}
	}
	for _, b := range []string{bin, "etcd"} {
		if _, err := exec.LookPath(b); err != nil || b == "" {
			msg := "no " + b + ": run `make kube-apiserver` and install Debian's etcd-server (.ci/run does both)"
			if os.Getenv(EnvRequire) != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	s, err := Start(context.Background(), Options{APIServer: bin, Dir: t.TempDir(), Output: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	crds, err := KnativeCRDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.InstallCRDs(context.Background(), crds...); err != nil {
		t.Fatal(err)
	}
	return s
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// logWriter passes the processes' output to the test log, which shows it
// only for a failed or verbose test.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
