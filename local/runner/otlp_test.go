package runner_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/gobuild"
)

// otlpSpan is a span as the test's collector received it.
type otlpSpan struct {
	service, name, trace, id, parent string
	attrs                            map[string]string
}

// otlpCollector is an OTLP/HTTP trace endpoint: it decodes every export
// with OpenTelemetry's protocol types and keeps the spans.
type otlpCollector struct {
	mu    sync.Mutex
	spans []otlpSpan
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	var req coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(b, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				attrs := map[string]string{}
				for _, kv := range sp.GetAttributes() {
					attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
				}
				c.spans = append(c.spans, otlpSpan{service: service, name: sp.GetName(), trace: hex.EncodeToString(sp.GetTraceId()),
					id: hex.EncodeToString(sp.GetSpanId()), parent: hex.EncodeToString(sp.GetParentSpanId()), attrs: attrs})
			}
		}
	}
	c.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (c *otlpCollector) all() []otlpSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans)
}

// TestOrdersAreOneTraceInTheCollector runs the runner as its own process
// with OTEL_EXPORTER_OTLP_ENDPOINT at a collector the test serves, places
// orders, and reads what arrives over OTLP/HTTP: each order is one trace,
// from the runner's ingress through take-order, prepare-beverage and
// notify (whose processes export to the runner, which passes their spans
// on), every span's parent in the same trace.
func TestOrdersAreOneTraceInTheCollector(t *testing.T) {
	coll := &otlpCollector{}
	srv := httptest.NewServer(coll)
	t.Cleanup(srv.Close)
	p := startRunnerBinary(t, "OTEL_EXPORTER_OTLP_ENDPOINT="+srv.URL, "OTEL_BSP_SCHEDULE_DELAY=100",
		"OTEL_SDK_DISABLED=", "OTEL_TRACES_SAMPLER=", "OTEL_TRACES_SAMPLER_ARG=")
	base, stop := p.url, p.stop
	orders := []string{"otlp-1", "otlp-2", "otlp-3"}
	for i, id := range orders {
		if resp, _ := testkit.PostBinary(t, base+"/default/default", testkit.Event(id, "/otlp-test", "com.koffeeshop.order.placed", fmt.Sprintf(`{"customer":"c%d","beverage":"latte"}`, i))); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("order %s: %d", id, resp.StatusCode)
		}
	}
	// The brew takes a second: wait until the board has all three
	// notified, then stop the runner, which flushes its spans, and its
	// functions theirs.
	testkit.Eventually(t, 60*time.Second, fmt.Sprintf("%d notified on the board", len(orders)), func() error {
		var st struct{ Orders map[string]int }
		if resp, err := http.Get(base + "/status"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if st.Orders["notified"] != len(orders) {
			return fmt.Errorf("board stages %v", st.Orders)
		}
		return nil
	})
	// Spans of the last hop reach the runner a moment after it ends: wait
	// until each order's trace has a span of every process at the
	// collector.
	testkit.Eventually(t, 30*time.Second, "every order's trace at the collector", func() error {
		spans := coll.all()
		for _, id := range orders {
			trace := ingressTrace(spans, id)
			services := map[string]bool{}
			for _, s := range spans {
				if trace != "" && s.trace == trace {
					services[s.service] = true
				}
			}
			for _, want := range []string{"koffeeshop", "take-order", "prepare-beverage", "notify"} {
				if !services[want] {
					return fmt.Errorf("order %s: no span of %s yet", id, want)
				}
			}
		}
		return nil
	})
	stop()

	spans := coll.all()
	byTrace := map[string][]otlpSpan{}
	for _, s := range spans {
		byTrace[s.trace] = append(byTrace[s.trace], s)
	}
	for _, id := range orders {
		trace := ingressTrace(spans, id)
		if trace == "" {
			t.Fatalf("order %s: no ingress span among %d spans", id, len(spans))
		}
		in := byTrace[trace]
		ids := map[string]bool{}
		services := map[string]bool{}
		for _, s := range in {
			ids[s.id] = true
			services[s.service] = true
		}
		for _, want := range []string{"koffeeshop", "take-order", "prepare-beverage", "notify"} {
			if !services[want] {
				t.Errorf("order %s: trace %s has no span of %s (services %v)", id, trace, want, services)
			}
		}
		roots := 0
		for _, s := range in {
			switch {
			case s.parent == "":
				roots++
			case !ids[s.parent]:
				t.Errorf("order %s: span %q of %s has parent %s, not in the trace", id, s.name, s.service, s.parent)
			}
		}
		if roots != 1 {
			t.Errorf("order %s: %d root spans, want 1 (the ingress)", id, roots)
		}
	}
	if len(byTrace) < len(orders) {
		t.Errorf("%d traces for %d orders", len(byTrace), len(orders))
	}
}

// ingressTrace is the trace of the runner's ingress span for event id, ""
// when there is none.
func ingressTrace(spans []otlpSpan, id string) string {
	var trace string
	for _, s := range spans {
		if s.service == "koffeeshop" && strings.HasPrefix(s.name, "ingress ") && s.attrs["cloudevents.event_id"] == id {
			trace = s.trace
		}
	}
	return trace
}

var (
	runnerBinOnce sync.Once
	runnerBin     string
	runnerBinErr  error
)

// runnerBinary builds the koffeeshop command once for the package's tests.
func runnerBinary(t *testing.T) string {
	t.Helper()
	runnerBinOnce.Do(func() {
		runnerBin = filepath.Join(binDir, "koffeeshop")
		if out, err := gobuild.Command(context.Background(), runnerBin, "github.com/koffeeshop/koffeeshop/local").CombinedOutput(); err != nil {
			runnerBinErr = fmt.Errorf("go build the runner: %v\n%s", err, out)
		}
	})
	if runnerBinErr != nil {
		t.Fatal(runnerBinErr)
	}
	return runnerBin
}

// runnerBinaryProc is the koffeeshop command running a shop, as make run
// runs it.
type runnerBinaryProc struct {
	url  string
	stop func()
}

// startRunnerBinary runs the shop of config/ as its own process, with env
// added to this process's environment, until the test ends or stop is
// called; it returns once the shop is ready.
func startRunnerBinary(t *testing.T, env ...string) *runnerBinaryProc {
	t.Helper()
	bin := runnerBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "-config", configDir(), "-bin-dir", binDir, "-addr", addr, "-data-dir", t.TempDir())
	cmd.Env = append(os.Environ(), env...)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := sync.OnceFunc(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("the runner did not stop within 30 s")
		}
	})
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("runner output:\n%s", logs.String())
		}
	})
	p := &runnerBinaryProc{url: "http://" + addr, stop: stop}
	waitReady(t, p.url, 30*time.Second)
	return p
}

// waitReady waits until the shop at base answers its readiness probe.
func waitReady(t *testing.T, base string, limit time.Duration) {
	t.Helper()
	testkit.Eventually(t, limit, "the shop at "+base+" ready", func() error { return testkit.GetOK(base + "/health/readiness") })
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
