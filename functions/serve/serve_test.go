package serve_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// syncBuffer is a bytes.Buffer safe for concurrent log writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// echo replies with type test.reply, echoing the data and naming the instance.
func echo(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	serve.Logger(ctx).Info("echoing")
	out := cloudevents.NewEvent()
	out.SetID("reply-" + e.ID())
	out.SetSource("/test")
	out.SetType("test.reply")
	out.SetSubject(serve.Instance(ctx))
	if err := out.SetData(cloudevents.ApplicationJSON, json.RawMessage(e.Data())); err != nil {
		return nil, fmt.Errorf("set data: %w", err)
	}
	return &out, nil
}

type running struct {
	srv  *serve.Server
	url  string
	stop context.CancelFunc
	done chan error
	logs *syncBuffer
}

// start runs a Server on 127.0.0.1 with a random port.
func start(t *testing.T, cfg serve.Config, h serve.Handler, routes ...serve.Route) *running {
	t.Helper()
	logs := &syncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = serve.NewLogger(logs, "test-fn", cfg.Instance)
	}
	srv, err := serve.New(cfg, h, routes...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{srv: srv, url: "http://" + ln.Addr().String(), stop: cancel, done: make(chan error, 1), logs: logs}
	go func() { r.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	return r
}

func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, readBody(t, resp)
}

func TestBinaryEventGetsBinaryReply(t *testing.T) {
	r := start(t, serve.Config{Instance: "inst-1"}, echo)

	resp, body := testkit.PostBinary(t, r.url+"/", testkit.Event("evt-1", "/test/client", "test.request", `{"hello":"world"}`))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, body %q", resp.StatusCode, body)
	}
	for header, want := range map[string]string{
		"Ce-Specversion": "1.0",
		"Ce-Id":          "reply-evt-1",
		"Ce-Source":      "/test",
		"Ce-Type":        "test.reply",
		"Ce-Subject":     "inst-1",
		"Content-Type":   "application/json",
	} {
		if got := resp.Header.Get(header); got != want {
			t.Errorf("%s = %q, want %q", header, got, want)
		}
	}
	if body != `{"hello":"world"}` {
		t.Errorf("body = %q", body)
	}
	logs := r.logs.String()
	for _, want := range []string{"msg=echoing", "function=test-fn", "instance=inst-1", "eventId=evt-1", "eventType=test.request"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

func TestStructuredEventGetsReply(t *testing.T) {
	r := start(t, serve.Config{Instance: "inst-2"}, echo)

	event := `{"specversion":"1.0","id":"evt-2","source":"/test/client","type":"test.request",` +
		`"datacontenttype":"application/json","data":{"n":1}}`
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.url+"/", strings.NewReader(event))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, body %q", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Ce-Id"); got != "reply-evt-2" {
		t.Errorf("Ce-Id = %q", got)
	}
	if body != `{"n":1}` {
		t.Errorf("body = %q", body)
	}
}

func TestHandlerErrorsMapToStatus(t *testing.T) {
	h := func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		switch e.Type() {
		case "bad":
			return nil, serve.BadRequest("no %s here", "coffee")
		case "wrapped-bad":
			return nil, fmt.Errorf("outer: %w", serve.BadRequest("inner"))
		case "panic":
			panic("boom")
		case "slow":
			<-ctx.Done()
			return nil, fmt.Errorf("gave up: %w", ctx.Err())
		case "none":
			return nil, nil
		default:
			return nil, errors.New("database on fire")
		}
	}
	r := start(t, serve.Config{HandlerTimeout: 50 * time.Millisecond}, h)

	for _, tc := range []struct {
		typ      string
		status   int
		bodyPart string
	}{
		{"bad", http.StatusBadRequest, "no coffee here"},
		{"wrapped-bad", http.StatusBadRequest, "inner"},
		{"transient", http.StatusInternalServerError, "database on fire"},
		{"panic", http.StatusInternalServerError, "panicked"},
		{"slow", http.StatusInternalServerError, "deadline exceeded"},
		{"none", http.StatusOK, ""},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			resp, body := testkit.PostBinary(t, r.url+"/", testkit.Event("id-"+tc.typ, "/test/client", tc.typ, `{}`))
			if resp.StatusCode != tc.status {
				t.Errorf("status = %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if !strings.Contains(body, tc.bodyPart) {
				t.Errorf("body %q lacks %q", body, tc.bodyPart)
			}
			if got := resp.Header.Get("Ce-Type"); got != "" {
				t.Errorf("unexpected reply event of type %q", got)
			}
		})
	}
	if logs := r.logs.String(); !strings.Contains(logs, "handler panicked") {
		t.Errorf("panic not logged:\n%s", logs)
	}
}

func TestRejectsNonEvents(t *testing.T) {
	r := start(t, serve.Config{MaxBodyBytes: 1024}, echo)

	t.Run("no cloudevent", func(t *testing.T) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.url+"/", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Errorf("status = %d, want 415", resp.StatusCode)
		}
	})
	t.Run("empty id", func(t *testing.T) {
		resp, _ := testkit.PostBinary(t, r.url+"/", testkit.Event("", "/test/client", "test.request", `{}`))
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status = %d, want 400", resp.StatusCode)
		}
	})
	for name, event := range map[string]string{
		"malformed structured": `{"specversion":"1.0","id":"x",`,
		"missing source":       `{"specversion":"1.0","id":"x","type":"t"}`,
	} {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.url+"/", strings.NewReader(event))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/cloudevents+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readBody(t, resp)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status = %d, want 400", resp.StatusCode)
			}
		})
	}
	t.Run("too large", func(t *testing.T) {
		resp, _ := testkit.PostBinary(t, r.url+"/", testkit.Event("big", "/test/client", "test.request", `"`+strings.Repeat("x", 2048)+`"`))
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status = %d, want 413", resp.StatusCode)
		}
	})
	t.Run("too large chunked", func(t *testing.T) {
		body := io.MultiReader(strings.NewReader(`"`), strings.NewReader(strings.Repeat("x", 2048)), strings.NewReader(`"`))
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.url+"/", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "big")
		req.Header.Set("Ce-Source", "/test")
		req.Header.Set("Ce-Type", "test.request")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status = %d, want 413", resp.StatusCode)
		}
	})
	t.Run("get root", func(t *testing.T) {
		if code, _ := get(t, r.url+"/"); code != http.StatusMethodNotAllowed {
			t.Errorf("GET / status = %d, want 405", code)
		}
	})
}

func TestHealth(t *testing.T) {
	r := start(t, serve.Config{}, echo)
	for _, path := range []string{serve.ReadinessPath, serve.LivenessPath} {
		code, body := get(t, r.url+path)
		if code != http.StatusOK || body != "ok" {
			t.Errorf("GET %s = %d %q, want 200 \"ok\"", path, code, body)
		}
	}
}

func readiness(srv *serve.Server) int {
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, serve.ReadinessPath, nil))
	return rec.Code
}

func TestGracefulDrain(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	slow := func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		close(started)
		<-release
		return echo(ctx, e)
	}
	r := start(t, serve.Config{DrainTimeout: 10 * time.Second}, slow)

	type result struct {
		status int
		typ    string
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, r.url+"/", strings.NewReader(`{}`))
		if err != nil {
			inflight <- result{err: err}
			return
		}
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "slow-1")
		req.Header.Set("Ce-Source", "/test")
		req.Header.Set("Ce-Type", "test.request")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			inflight <- result{err: err}
			return
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		inflight <- result{status: resp.StatusCode, typ: resp.Header.Get("Ce-Type"), err: err}
	}()

	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("slow handler never started")
	}
	if code := readiness(r.srv); code != http.StatusOK {
		t.Fatalf("readiness before shutdown = %d, want 200", code)
	}

	r.stop()

	testkit.WaitFor(t, 5*time.Second, "readiness 503 after shutdown began", func() bool {
		return readiness(r.srv) == http.StatusServiceUnavailable
	})
	// New connections are refused once the listener is closed.
	testkit.WaitFor(t, 5*time.Second, "the listener refusing connections after shutdown began", func() bool {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(r.url, "http://"), time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	select {
	case err := <-r.done:
		t.Fatalf("Serve returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}

	close(release)
	select {
	case res := <-inflight:
		if res.err != nil {
			t.Fatalf("in-flight request failed: %v", res.err)
		}
		if res.status != http.StatusOK || res.typ != "test.reply" {
			t.Errorf("in-flight request got %d %q, want 200 test.reply", res.status, res.typ)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request did not complete")
	}
	if err := r.wait(t); err != nil {
		t.Errorf("Serve = %v, want nil after a complete drain", err)
	}
	if logs := r.logs.String(); !strings.Contains(logs, "shutting down") || !strings.Contains(logs, "msg=stopped") {
		t.Errorf("shutdown not logged:\n%s", logs)
	}
}

func TestDrainTimeout(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	stuck := func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		close(started)
		<-release
		return nil, nil
	}
	r := start(t, serve.Config{DrainTimeout: 100 * time.Millisecond}, stuck)

	go func() {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.url+"/", strings.NewReader(`{}`))
		if err != nil {
			return
		}
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "stuck-1")
		req.Header.Set("Ce-Source", "/test")
		req.Header.Set("Ce-Type", "test.request")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-started

	begin := time.Now()
	r.stop()
	err := r.wait(t)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Serve = %v, want a drain deadline error", err)
	}
	if elapsed := time.Since(begin); elapsed > 5*time.Second {
		t.Errorf("Serve took %v to give up draining", elapsed)
	}
}

func TestServeFailsOnClosedListener(t *testing.T) {
	srv, err := serve.New(serve.Config{}, echo)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := srv.Serve(t.Context(), ln); err == nil {
		t.Fatal("Serve succeeded on a closed listener")
	}
	if code := readiness(srv); code != http.StatusServiceUnavailable {
		t.Errorf("readiness after failure = %d, want 503", code)
	}
}

func TestNewRejectsNilHandler(t *testing.T) {
	if _, err := serve.New(serve.Config{}, nil); err == nil {
		t.Fatal("New accepted a nil handler")
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	ctx := serve.WithLogger(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)))
	serve.Logger(ctx).Info("hello")
	if !strings.Contains(buf.String(), "msg=hello") {
		t.Errorf("log = %q", buf.String())
	}
	serve.Logger(context.Background()).Info("discarded")
	if serve.Instance(context.Background()) != "" {
		t.Error("instance without WithInstance")
	}
	if got := serve.Instance(serve.WithInstance(ctx, "pod-1")); got != "pod-1" {
		t.Errorf("Instance = %q", got)
	}
}
