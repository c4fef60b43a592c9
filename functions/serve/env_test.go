package serve_test

import (
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// dup returns a duplicate of f's descriptor, which the caller owns, and
// closes f.
func dup(t *testing.T, f *os.File) int {
	t.Helper()
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatalf("dup: %v", err)
	}
	return fd
}

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestListenFromFD(t *testing.T) {
	parent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := parent.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	fd := dup(t, f)
	addr := parent.Addr().String()
	parent.Close()

	ln, err := serve.Listen(env(map[string]string{
		serve.EnvListenFD: strconv.Itoa(fd),
		serve.EnvPort:     "not used",
	}))
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	if got := ln.Addr().String(); got != addr {
		t.Errorf("listener addr = %s, want %s", got, addr)
	}

	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial inherited listener: %v", err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
}

func TestListenErrors(t *testing.T) {
	for name, kv := range map[string]map[string]string{
		"fd not a number": {serve.EnvListenFD: "three"},
		"fd is stdin":     {serve.EnvListenFD: "0"},
		"fd not open":     {serve.EnvListenFD: "987654"},
		"bad port":        {serve.EnvPort: "http"},
		"port too large":  {serve.EnvPort: "70000"},
	} {
		t.Run(name, func(t *testing.T) {
			ln, err := serve.Listen(env(kv))
			if err == nil {
				ln.Close()
				t.Fatalf("Listen(%v) succeeded", kv)
			}
		})
	}
}

func TestListenFDNotASocket(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	if ln, err := serve.FileListener(uintptr(dup(t, f))); err == nil {
		ln.Close()
		t.Fatal("FileListener accepted a regular file")
	}
}

func TestListenOnPort(t *testing.T) {
	ln, err := serve.Listen(env(map[string]string{serve.EnvPort: "0"}))
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	if port := ln.Addr().(*net.TCPAddr).Port; port == 0 {
		t.Error("listener has no port")
	}
}

func TestDurationEnv(t *testing.T) {
	const key = "D"
	for _, tc := range []struct {
		val     string
		want    time.Duration
		wantErr bool
	}{
		{"", 7 * time.Second, false},
		{"0", 0, false},
		{"0s", 0, false},
		{"250ms", 250 * time.Millisecond, false},
		{"2m", 2 * time.Minute, false},
		{"-1s", 0, true},
		{"soon", 0, true},
		{"5", 0, true},
	} {
		got, err := serve.DurationEnv(env(map[string]string{key: tc.val}), key, 7*time.Second)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("DurationEnv(%q) = %v, %v; want %v, error %v", tc.val, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestInstanceName(t *testing.T) {
	if got := serve.InstanceName(env(map[string]string{serve.EnvInstance: "barista-3"})); got != "barista-3" {
		t.Errorf("InstanceName = %q, want barista-3", got)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no hostname: %v", err)
	}
	if got := serve.InstanceName(env(nil)); got != host {
		t.Errorf("InstanceName fallback = %q, want hostname %q", got, host)
	}
}

func TestStatusCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, http.StatusOK},
		{serve.BadRequest("nope"), http.StatusBadRequest},
		{errors.Join(errors.New("ctx"), serve.BadRequest("nope")), http.StatusBadRequest},
		{cehttp.NewResult(http.StatusConflict, "dup"), http.StatusConflict},
		{errors.New("boom"), http.StatusInternalServerError},
	} {
		if got := serve.StatusCode(tc.err); got != tc.want {
			t.Errorf("StatusCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	errSentinel := errors.New("sentinel")
	wrapped := serve.BadRequest("decode: %w", errSentinel)
	if !errors.Is(wrapped, errSentinel) {
		t.Error("BadRequest does not wrap with %w")
	}
}
