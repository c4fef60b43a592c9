package ops

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(ln, func() error { return nil }, NewRegistry())
	readiness := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + ReadinessPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := readiness(); code != http.StatusOK {
		t.Errorf("readiness = %d, want 200", code)
	}
	s.Drain()
	if code, body := readiness(); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("readiness while draining = %d %q, want 503 draining", code, body)
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-s.Err(); err == nil || !strings.Contains(err.Error(), "probes: ") {
		t.Errorf("Err after Shutdown = %v", err)
	}
}
