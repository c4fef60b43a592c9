package ops

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	var notReady error = errors.New("NATS is RECONNECTING")
	srv := httptest.NewServer(Handler(func() error { return notReady }, NewRegistry()))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := get(ReadinessPath); code != http.StatusServiceUnavailable || !strings.Contains(body, "RECONNECTING") {
		t.Errorf("readiness while not ready = %d %q, want 503 with the reason", code, body)
	}
	if code, _ := get(LivenessPath); code != http.StatusOK {
		t.Errorf("liveness while not ready = %d, want 200: a process waiting for NATS needs no restart", code)
	}
	notReady = nil
	if code, _ := get(ReadinessPath); code != http.StatusOK {
		t.Errorf("readiness when ready = %d", code)
	}
	code, body := get(MetricsPath)
	if code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_cpu_seconds_total") {
		t.Errorf("metrics = %d, without the Go and process collectors:\n%.300s", code, body)
	}
	if code, _ := get("/"); code != http.StatusNotFound {
		t.Errorf("/ = %d, want 404", code)
	}
}
