package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// The test binary doubles as a function instance: with helperEnv set it
// serves on the listener inherited as FUNC_LISTEN_FD instead of running the
// tests.
const (
	helperEnv     = "SUPERVISOR_TEST_HELPER"      // serve, crash
	readyDelayEnv = "SUPERVISOR_TEST_READY_DELAY" // readiness answers 503 until then
	ignoreTermEnv = "SUPERVISOR_TEST_IGNORE_TERM" // 1: SIGTERM does not stop it
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "serve":
		os.Exit(helperServe())
	case "crash":
		fmt.Println("helper: crashing")
		os.Exit(3)
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: unknown\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

func helperServe() int {
	begin := time.Now()
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	delay, _ := time.ParseDuration(os.Getenv(readyDelayEnv))
	fd, err := strconv.Atoi(os.Getenv("FUNC_LISTEN_FD"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: FUNC_LISTEN_FD:", err)
		return 2
	}
	ln, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health/readiness", func(w http.ResponseWriter, _ *http.Request) {
		if time.Since(begin) < delay {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, os.Getenv("KOFFEESHOP_INSTANCE"))
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("helper: serving pid=%d\n", os.Getpid())
	for range term {
		if os.Getenv(ignoreTermEnv) == "1" {
			fmt.Println("helper: SIGTERM ignored")
			continue
		}
		fmt.Println("helper: SIGTERM")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		return 0
	}
	return 0
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
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

func (b *syncBuffer) Count(s string) int { return strings.Count(b.String(), s) }

// harness runs a Pool of helper processes; unless told otherwise, scaling is
// driven by the test alone (the autoscaler's tick is an hour away).
type harness struct {
	t      *testing.T
	p      *Pool
	logs   *syncBuffer // the Pool's log
	out    *syncBuffer // the instances' output
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
}

type harnessOpts struct {
	env          []string // on top of helperEnv=serve
	scaling      Scaling  // default: a tick an hour away
	drainTimeout time.Duration
	readyTimeout time.Duration
	coldStart    func(time.Duration)
	beforeExec   func(instance string)
	afterExec    func(instance string, pid int)
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if o.drainTimeout == 0 {
		o.drainTimeout = 10 * time.Second
	}
	if o.readyTimeout == 0 {
		o.readyTimeout = 20 * time.Second
	}
	h := &harness{t: t, logs: &syncBuffer{}, out: &syncBuffer{}, done: make(chan struct{})}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	spec := Spec{
		Namespace: "default",
		Name:      "fn",
		Binary:    bin,
		// A helper built with -race would sleep a second as it exits.
		Env:          append([]string{helperEnv + "=serve", "GORACE=atexit_sleep_ms=0"}, o.env...),
		ReadyTimeout: o.readyTimeout,
		DrainTimeout: o.drainTimeout,
	}
	if o.scaling.Tick == 0 {
		o.scaling.Tick = time.Hour
	}
	h.p = NewPool(spec, o.scaling, Options{ColdStart: o.coldStart}, log, h.out, nil)
	h.p.beforeExec, h.p.afterExec = o.beforeExec, o.afterExec
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.p.Run(ctx)
	}()
	t.Cleanup(func() {
		h.cancel()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
		if t.Failed() {
			t.Logf("pool log:\n%s\ninstance output:\n%s", h.logs, h.out)
		}
	})
	return h
}

// scaleTo sets the Pool's desired instance count as the autoscaler would.
func (p *Pool) scaleTo(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setDesiredLocked(n, "test", 0)
}

// holdsFor checks that cond keeps holding for d.
func holdsFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			t.Fatalf("%s stopped holding", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gone reports whether no process (not even a zombie) has pid.
func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// only returns the Pool's single instance, if it has exactly one.
func only(p *Pool) (InstanceStatus, bool) {
	s := p.Status()
	if len(s.Instances) != 1 {
		return InstanceStatus{}, false
	}
	return s.Instances[0], true
}

func (h *harness) empty() bool { return len(h.p.Status().Instances) == 0 }

// assertGone waits for the Pool to be empty and pid to be reaped.
func (h *harness) assertGone(pid int) {
	h.t.Helper()
	testkit.WaitFor(h.t, 15*time.Second, "the pool to have no instance", h.empty)
	if !gone(pid) {
		h.t.Fatalf("the pool is empty but process %d still exists", pid)
	}
}

// startOne scales the Pool to one instance and waits until its process
// started and installed its SIGTERM handler; it is starting still when
// readiness is delayed.
func (h *harness) startOne() InstanceStatus {
	h.t.Helper()
	h.p.scaleTo(1)
	var in InstanceStatus
	testkit.WaitFor(h.t, 15*time.Second, "an instance with a process", func() bool {
		var ok bool
		in, ok = only(h.p)
		return ok && in.PID != 0
	})
	testkit.WaitFor(h.t, 15*time.Second, "the helper to serve", func() bool {
		return strings.Contains(h.out.String(), fmt.Sprintf("helper: serving pid=%d", in.PID))
	})
	return in
}

const slowReady = 5 * time.Second // far longer than a stop takes

// A scale down that picks an instance still starting stops its process at
// once: it is sent SIGTERM, never becomes ready and leaves the Pool.
func TestPoolScaleDownWhileStarting(t *testing.T) {
	h := newHarness(t, harnessOpts{env: []string{readyDelayEnv + "=" + slowReady.String()}})
	in := h.startOne()
	if in.State != "starting" {
		t.Fatalf("instance %s is %s, want starting", in.Name, in.State)
	}
	t0 := time.Now()
	h.p.scaleTo(0)
	h.assertGone(in.PID)
	if took := time.Since(t0); took >= slowReady {
		t.Errorf("the stop took %s, as long as the readiness delay", took)
	}
	if !strings.Contains(h.out.String(), "helper: SIGTERM") {
		t.Errorf("the process was not sent SIGTERM")
	}
	logs := h.logs.String()
	for _, bad := range []string{"instance ready", "killing it", "instance exited", "did not become ready"} {
		if strings.Contains(logs, bad) {
			t.Errorf("log has %q", bad)
		}
	}
	if !strings.Contains(logs, `reason="scale down"`) {
		t.Errorf("log has no stop for scale down")
	}
	if s := h.p.Status(); s.Desired != 0 || s.Ready != 0 {
		t.Errorf("status %+v, want nothing desired nor ready", s)
	}
}

// The race the owner goroutine closes: the scale down lands after the
// owner's first check but before the process exists. The process, once
// started, is terminated, never becomes ready and leaves the Pool.
func TestPoolScaleDownBeforeExec(t *testing.T) {
	var h *harness
	pids := make(chan int, 1)
	var once sync.Once
	h = newHarness(t, harnessOpts{
		env: []string{readyDelayEnv + "=" + slowReady.String()},
		beforeExec: func(string) {
			once.Do(func() {
				h.p.scaleTo(0)
				testkit.WaitFor(t, 15*time.Second, "the starting instance to be draining", func() bool {
					in, ok := only(h.p)
					return ok && in.State == "draining" && in.PID == 0
				})
			})
		},
		afterExec: func(_ string, pid int) { pids <- pid },
	})
	t0 := time.Now()
	h.p.scaleTo(1)
	var pid int
	select {
	case pid = <-pids:
	case <-time.After(15 * time.Second):
		t.Fatal("no process started")
	}
	h.assertGone(pid)
	if took := time.Since(t0); took >= slowReady {
		t.Errorf("the stop took %s, as long as the readiness delay", took)
	}
	logs := h.logs.String()
	for _, bad := range []string{"instance ready", "killing it", "instance exited"} {
		if strings.Contains(logs, bad) {
			t.Errorf("log has %q", bad)
		}
	}
	if n := h.logs.Count("stopping instance"); n != 1 {
		t.Errorf("%d stops logged, want 1", n)
	}
}

// Cancelling Run while an instance is starting stops the process and Run
// returns.
func TestPoolRunCancelWhileStarting(t *testing.T) {
	h := newHarness(t, harnessOpts{env: []string{readyDelayEnv + "=" + slowReady.String()}})
	in := h.startOne()
	t0 := time.Now()
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	if took := time.Since(t0); took >= slowReady {
		t.Errorf("the shutdown took %s, as long as the readiness delay", took)
	}
	if !gone(in.PID) {
		t.Fatalf("Run returned but process %d still exists", in.PID)
	}
	if !h.empty() {
		t.Errorf("instances left: %+v", h.p.Status().Instances)
	}
	if !strings.Contains(h.out.String(), "helper: SIGTERM") {
		t.Errorf("the process was not sent SIGTERM")
	}
	if strings.Contains(h.logs.String(), "instance ready") {
		t.Errorf("the instance became ready")
	}
}

// Cancelling Run after the owner's first check but before the process
// exists: Run still returns only once the process is gone.
func TestPoolRunCancelBeforeExec(t *testing.T) {
	var h *harness
	pids := make(chan int, 1)
	h = newHarness(t, harnessOpts{
		env: []string{readyDelayEnv + "=" + slowReady.String()},
		beforeExec: func(string) {
			h.cancel()
			testkit.WaitFor(t, 15*time.Second, "shutdown to reach the starting instance", func() bool {
				in, ok := only(h.p)
				return ok && in.State == "draining"
			})
		},
		afterExec: func(_ string, pid int) { pids <- pid },
	})
	h.p.scaleTo(1)
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	select {
	case pid := <-pids:
		if !gone(pid) {
			t.Fatalf("Run returned but process %d still exists", pid)
		}
	default:
		t.Fatal("no process was started")
	}
	if !h.empty() {
		t.Errorf("instances left: %+v", h.p.Status().Instances)
	}
	if strings.Contains(h.logs.String(), "instance ready") {
		t.Errorf("the instance became ready")
	}
}

// The normal path: Acquire scales from zero, the instance becomes ready and
// serves; scaled back down, it is sent SIGTERM and exits.
func TestPoolScaleFromZeroAndBack(t *testing.T) {
	var mu sync.Mutex
	var colds []time.Duration
	h := newHarness(t, harnessOpts{
		env: []string{readyDelayEnv + "=100ms"},
		coldStart: func(d time.Duration) {
			mu.Lock()
			colds = append(colds, d)
			mu.Unlock()
		},
	})
	if s := h.p.Status(); s.Desired != 0 || len(s.Instances) != 0 {
		t.Fatalf("a new pool has %+v", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	u, release, err := h.p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := h.p.Status()
	if s.Desired != 1 || s.Ready != 1 || s.InFlight != 1 || len(s.Instances) != 1 {
		t.Fatalf("status after Acquire: %+v", s)
	}
	in := s.Instances[0]
	if in.State != "ready" || in.PID == 0 || in.URL != u.String() || in.ColdStart <= 0 {
		t.Fatalf("instance after Acquire: %+v", in)
	}
	if s.LastColdStart <= 0 {
		t.Errorf("no cold start recorded: %+v", s)
	}
	// The cold start is reported just after the instance turns ready.
	testkit.WaitFor(t, 5*time.Second, "the cold start to be reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(colds) > 0
	})
	mu.Lock()
	if len(colds) != 1 || colds[0] <= 0 {
		t.Errorf("cold starts reported: %v, want one", colds)
	}
	mu.Unlock()

	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != in.Name {
		t.Errorf("the instance answered %q, want its name %q", body, in.Name)
	}

	release()
	release() // twice is harmless
	if s := h.p.Status(); s.InFlight != 0 {
		t.Fatalf("in flight after release: %d", s.InFlight)
	}
	h.p.scaleTo(0)
	h.assertGone(in.PID)
	if !strings.Contains(h.out.String(), in.Name+" | helper: SIGTERM") {
		t.Errorf("the process was not sent SIGTERM")
	}
	logs := h.logs.String()
	if n := strings.Count(logs, "instance ready"); n != 1 {
		t.Errorf("%d ready instances logged, want 1", n)
	}
	for _, bad := range []string{"killing it", "instance exited"} {
		if strings.Contains(logs, bad) {
			t.Errorf("log has %q", bad)
		}
	}
}

// A scale down waits for the requests in flight before it sends SIGTERM.
func TestPoolScaleDownDrainsInFlight(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, release, err := h.p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := only(h.p)
	h.p.scaleTo(0)
	testkit.WaitFor(t, 5*time.Second, "the instance to drain", func() bool {
		in, ok := only(h.p)
		return ok && in.State == "draining"
	})
	holdsFor(t, 300*time.Millisecond, "the draining instance with a request in flight", func() bool {
		return !gone(in.PID) && !strings.Contains(h.out.String(), "SIGTERM")
	})
	release()
	h.assertGone(in.PID)
	if !strings.Contains(h.out.String(), "helper: SIGTERM") {
		t.Errorf("the process was not sent SIGTERM")
	}
}

// An instance that ignores SIGTERM is killed after the drain timeout.
func TestPoolKillsStubbornInstance(t *testing.T) {
	h := newHarness(t, harnessOpts{env: []string{ignoreTermEnv + "=1"}, drainTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, release, err := h.p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	in, _ := only(h.p)
	h.p.scaleTo(0)
	h.assertGone(in.PID)
	if !strings.Contains(h.out.String(), "helper: SIGTERM ignored") {
		t.Errorf("the process was not sent SIGTERM")
	}
	if !strings.Contains(h.logs.String(), "killing it") {
		t.Errorf("no SIGKILL logged")
	}
}

// KillOne kills a ready instance, as a crash would, and the Pool replaces
// it.
func TestPoolKillOne(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	if _, err := h.p.KillOne(); !errors.Is(err, ErrNoInstance) {
		t.Fatalf("KillOne on an empty pool: %v, want ErrNoInstance", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, release, err := h.p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	old, _ := only(h.p)
	name, err := h.p.KillOne()
	if err != nil || name != old.Name {
		t.Fatalf("KillOne: %q, %v; want %q", name, err, old.Name)
	}
	var repl InstanceStatus
	testkit.WaitFor(t, 15*time.Second, "a ready replacement", func() bool {
		var ok bool
		repl, ok = only(h.p)
		return ok && repl.Name != old.Name && repl.State == "ready"
	})
	if !gone(old.PID) {
		t.Errorf("killed process %d still exists", old.PID)
	}
	if !strings.Contains(h.logs.String(), "instance exited") {
		t.Errorf("the crash was not logged")
	}
	h.cancel()
	<-h.done
	if !gone(repl.PID) {
		t.Errorf("Run returned but process %d still exists", repl.PID)
	}
}

// Instances that die before they are ready are restarted ever more slowly.
// A restart waits for a tick once the backoff is over: the ticks are short
// here, and min-scale keeps the autoscaler from scaling to zero.
func TestPoolCrashLoopBacksOff(t *testing.T) {
	h := newHarness(t, harnessOpts{
		env:     []string{helperEnv + "=crash"},
		scaling: Scaling{Tick: 10 * time.Millisecond, MinScale: 1},
	})
	failures := func() int {
		h.p.mu.Lock()
		defer h.p.mu.Unlock()
		return h.p.failures
	}
	h.p.scaleTo(1)
	testkit.WaitFor(t, 15*time.Second, "a first failure", func() bool { return failures() >= 1 })
	t0 := time.Now()
	testkit.WaitFor(t, 15*time.Second, "a third failure", func() bool { return failures() >= 3 })
	// 200ms after the first failure, 400ms after the second.
	if took := time.Since(t0); took < 550*time.Millisecond {
		t.Errorf("three failures within %s: no backoff", took)
	}
	if strings.Contains(h.logs.String(), "instance ready") {
		t.Errorf("a crashing instance became ready")
	}
}
