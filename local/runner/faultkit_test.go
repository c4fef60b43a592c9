//go:build faults

package runner_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/runner"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// The fault tests share these helpers: a timestamping event sink, a load
// generator bounded by count and time, a tally that turns both into a
// RESULT line, quiet in-process shops and nats-server processes on fixed
// ports. Every process writes to a log file whose tail is shown only when
// the test fails, so `go test -v` prints little besides the RESULT lines.

const typeNotified = "com.koffeeshop.customer.notified"

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// logFile collects the output of the processes a test runs; its tail is
// logged when the test fails, and with FAULTS_KEEP_LOGS=<dir> the whole
// file is copied there.
type logFile struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

func newLogFile(t testing.TB, name string) *logFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	l := &logFile{f: f, path: path}
	t.Cleanup(func() {
		l.mu.Lock()
		_ = f.Close()
		l.mu.Unlock()
		if t.Failed() {
			t.Logf("last lines of %s:\n%s", name, tail(path, 150))
		}
		if d := os.Getenv("FAULTS_KEEP_LOGS"); d != "" {
			b, _ := os.ReadFile(path)
			_ = os.WriteFile(filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name+".log"), b, 0o644)
		}
	})
	return l
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 4*n {
			lines = slices.Clone(lines[len(lines)-n:])
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sink is an HTTP CloudEvents receiver that stamps each event with its
// arrival time: an observer Trigger's subscriber or a dead-letter sink. A
// compact sink keeps only the type and the customer of each event, so that
// what the test itself holds does not weigh on a memory measurement.
type sink struct {
	mu      sync.Mutex
	events  []sinkEvent
	compact bool
	srv     *httptest.Server
}

type sinkEvent struct {
	ev       cloudevents.Event // zero in a compact sink
	typ      string
	customer string // of a customer.notified event
	at       time.Time
}

func newSink(t testing.TB) *sink { return startSink(t, false) }

func startSink(t testing.TB, compact bool) *sink {
	s := &sink{compact: compact}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		se := sinkEvent{typ: ev.Type(), at: time.Now()}
		if ev.Type() == typeNotified {
			var n notified
			if err := ev.DataAs(&n); err == nil {
				se.customer = n.Customer
			}
		}
		if !compact {
			se.ev = *ev
		}
		s.mu.Lock()
		s.events = append(s.events, se)
		s.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) URL() string { return s.srv.URL }

func (s *sink) all() []sinkEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

func (s *sink) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// notified counts customer.notified events per customer and keeps the
// arrival of the first one.
func (s *sink) notified() (count map[string]int, first map[string]time.Time) {
	count, first = map[string]int{}, map[string]time.Time{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.events {
		if e.typ != typeNotified || e.customer == "" {
			continue
		}
		count[e.customer]++
		if _, ok := first[e.customer]; !ok {
			first[e.customer] = e.at
		}
	}
	return count, first
}

// observerYAML is a Trigger that sends every customer.notified event of
// the default Broker to url.
func observerYAML(url, ackWait string) string {
	ann := ""
	if ackWait != "" {
		ann = fmt.Sprintf("  annotations:\n    %s: %q\n", triggers.AckWaitAnnotation, ackWait)
	}
	return fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: test-observer
  namespace: default
%sspec:
  broker: default
  filter:
    attributes:
      type: %s
  subscriber:
    uri: %s
`, ann, typeNotified, url)
}

// faultConfig copies config/ with the replacements, gives every Trigger
// the ack-wait annotation (when ackWait is set) and adds an observer
// Trigger to obs plus the extra manifests, by file name.
func faultConfig(t testing.TB, ackWait, obs string, extra map[string]string, replacements ...string) string {
	t.Helper()
	if ackWait != "" {
		replacements = append(replacements, "kind: Trigger\nmetadata:\n",
			fmt.Sprintf("kind: Trigger\nmetadata:\n  annotations:\n    %s: %q\n", triggers.AckWaitAnnotation, ackWait))
	}
	dir := scaledConfig(t, replacements...)
	if ackWait != "" {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		trigs, annotated := 0, 0
		for _, f := range files {
			b, _ := os.ReadFile(f)
			trigs += strings.Count(string(b), "kind: Trigger")
			annotated += strings.Count(string(b), triggers.AckWaitAnnotation)
		}
		if trigs == 0 || trigs != annotated {
			t.Fatalf("config: %d Triggers, %d with the ack-wait annotation", trigs, annotated)
		}
	}
	files := map[string]string{"zz-observer.yaml": observerYAML(obs, ackWait)}
	for k, v := range extra {
		files[k] = v
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// quietShop is an in-process runner whose logs and function output go to
// a log file.
type quietShop struct {
	*runner.Runner
	stop func()
}

type quietOptions struct {
	configDir string
	natsURL   string
	replicas  int
	env       map[string][]string
	logLevel  slog.Level
}

func startQuietShop(t testing.TB, o quietOptions) *quietShop {
	t.Helper()
	out := newLogFile(t, "runner")
	env := map[string][]string{"prepare-beverage": {"BREW_TIME=0s"}}
	for k, v := range o.env {
		env[k] = append(env[k], v...)
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: o.logLevel}))
	ctx, cancel := context.WithCancel(context.Background())
	r, err := runner.New(ctx, runner.Options{
		ConfigDirs: []string{o.configDir},
		NATS:       runner.NATSOptions{External: natsconn.Options{URL: o.natsURL}, DataDir: t.TempDir(), Port: -1, Replicas: o.replicas},
		HTTP:       runner.HTTPOptions{Addr: "127.0.0.1:0"},
		Functions:  runner.FunctionOptions{BinDir: binDir, Env: env, Output: out},
	}, log)
	if err != nil {
		cancel()
		t.Fatalf("runner: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("runner stopped with %v", err)
			}
		case <-time.After(90 * time.Second):
			t.Errorf("runner did not stop")
		}
	})
	t.Cleanup(stop)
	return &quietShop{Runner: r, stop: stop}
}

// triggerStatus returns the counters of one Trigger (namespace/name).
func triggerStatus(r *runner.Runner, name string) runner.TriggerStatus {
	for _, tr := range r.Status().Triggers {
		if tr.Name == name {
			return tr
		}
	}
	return runner.TriggerStatus{}
}

// load places orders at a fixed rate from its own goroutines, each order
// once, and records every answer. It stops after n orders or after maxDur,
// whichever comes first.
type load struct {
	mu     sync.Mutex
	orders []*sentOrder
	client *http.Client
	done   chan struct{}
	quit   chan struct{} // closed when the test ends early
}

type sentOrder struct {
	customer   string
	start, end time.Time
	status     int // 0: no HTTP answer
	err        error
}

var beverages = []string{"latte", "espresso", "cappuccino", "mocha", "americano"}

func startLoad(t testing.TB, url, prefix string, n int, every, maxDur time.Duration) *load {
	t.Helper()
	l := &load{
		done: make(chan struct{}),
		quit: make(chan struct{}),
		client: &http.Client{
			Timeout: 15 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     10 * time.Second,
			},
		},
	}
	go func() {
		defer close(l.done)
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range n {
			if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
				select {
				case <-time.After(d):
				case <-l.quit:
				}
			}
			if time.Since(start) > maxDur || isClosed(l.quit) {
				break
			}
			sem <- struct{}{}
			o := &sentOrder{customer: fmt.Sprintf("%s-%05d", prefix, i), start: time.Now()}
			l.mu.Lock()
			l.orders = append(l.orders, o)
			l.mu.Unlock()
			wg.Go(func() {
				defer func() { <-sem }()
				status, err := l.place(url, o.customer, beverages[i%len(beverages)])
				l.mu.Lock()
				o.status, o.err, o.end = status, err, time.Now()
				l.mu.Unlock()
			})
		}
		wg.Wait()
		l.client.CloseIdleConnections()
	}()
	t.Cleanup(func() {
		close(l.quit)
		l.wait()
	})
	return l
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (l *load) place(url, customer, beverage string) (int, error) {
	body := fmt.Sprintf(`{"customer":%q,"beverage":%q}`, customer, beverage)
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", customer)
	req.Header.Set("ce-source", "/faults")
	req.Header.Set("ce-type", "com.koffeeshop.order.placed")
	req.Header.Set("content-type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (l *load) wait() { <-l.done }

// sent is how many orders were sent (or are on their way).
func (l *load) sent() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.orders)
}

// waitSent waits until k orders were sent, or the load ended.
func (l *load) waitSent(t testing.TB, k int) {
	t.Helper()
	for l.sent() < k {
		select {
		case <-l.done:
			t.Fatalf("the load ended after %d orders, before %d", l.sent(), k)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (l *load) snapshot() []sentOrder {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]sentOrder, len(l.orders))
	for i, o := range l.orders {
		out[i] = *o
	}
	return out
}

// result is one fault test's outcome, as reported in its RESULT line.
type result struct {
	sent, accepted, delivered, duplicates, lost int
	unavailable, connErrors, otherStatus        int             // the orders not accepted
	extraNotified                               int             // notified without a 202
	latencies                                   []time.Duration // 202 → customer.notified
	answers                                     []time.Duration // request → ingress answer
}

// tally waits for the load to end and for every accepted order to reach
// customer.notified (up to timeout), then logs the RESULT line and fails
// the test if any accepted order was lost.
func tally(t testing.TB, name, injected string, l *load, obs *sink, timeout time.Duration) result {
	t.Helper()
	l.wait()
	orders := l.snapshot()
	var res result
	res.sent = len(orders)
	accepted := map[string]time.Time{}
	for _, o := range orders {
		res.answers = append(res.answers, o.end.Sub(o.start))
		switch {
		case o.status == http.StatusAccepted:
			accepted[o.customer] = o.end
		case o.status == http.StatusServiceUnavailable:
			res.unavailable++
		case o.status == 0:
			res.connErrors++
		default:
			res.otherStatus++
		}
	}
	res.accepted = len(accepted)
	var count map[string]int
	var first map[string]time.Time
	// What is still missing then is reported below.
	_ = testkit.Poll(timeout, func() error {
		count, first = obs.notified()
		for c := range accepted {
			if count[c] == 0 {
				return errors.New("an accepted order not notified")
			}
		}
		return nil
	})
	// Late duplicates (redeliveries) get a moment to show up.
	time.Sleep(2 * time.Second)
	count, first = obs.notified()
	var missing []string
	for c, at := range accepted {
		if count[c] == 0 {
			missing = append(missing, c)
			continue
		}
		res.delivered++
		res.latencies = append(res.latencies, first[c].Sub(at))
	}
	inLoad := map[string]bool{}
	for _, o := range orders {
		inLoad[o.customer] = true
	}
	for c, n := range count {
		if !inLoad[c] {
			continue
		}
		res.duplicates += n - 1
		if _, ok := accepted[c]; !ok {
			res.extraNotified++
		}
	}
	res.lost = len(missing)
	t.Logf("RESULT %s: sent %d, accepted %d, delivered %d, duplicates %d, lost %d (injected: %s; not accepted: %d = %d 503 + %d connection errors + %d other; notified without a 202: %d; ingress answer p99 %s; 202→notified p50 %s, max %s)",
		name, res.sent, res.accepted, res.delivered, res.duplicates, res.lost,
		injected, res.sent-res.accepted, res.unavailable, res.connErrors, res.otherStatus, res.extraNotified,
		percentile(res.answers, 99), percentile(res.latencies, 50), percentile(res.latencies, 100))
	if res.lost != 0 {
		slices.Sort(missing)
		t.Errorf("%s: %d accepted orders never reached customer.notified, e.g. %v", name, res.lost, missing[:min(len(missing), 20)])
	}
	if res.accepted == 0 {
		t.Errorf("%s: no order was accepted", name)
	}
	return res
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return s[i].Round(time.Millisecond)
}

// natsProc is a nats-server process on fixed ports, so it can be stopped
// and started again at the same address with the same store.
type natsProc struct {
	t    testing.TB
	name string
	args []string
	port int
	out  *logFile
	cmd  *exec.Cmd
	done chan struct{}
}

// startNATSProc starts nats-server with JetStream on 127.0.0.1:port, its
// store in storeDir, and extra flags (cluster settings).
func startNATSProc(t testing.TB, name string, port int, storeDir string, extra ...string) *natsProc {
	t.Helper()
	args := append([]string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", storeDir, "-n", name}, extra...)
	p := &natsProc{t: t, name: name, args: args, port: port, out: newLogFile(t, name)}
	p.start()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

func (p *natsProc) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", p.port) }

func (p *natsProc) start() {
	p.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "nats-server"), p.args...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	testkit.Eventually(p.t, 30*time.Second, fmt.Sprintf("nats-server %s listening on %d", p.name, p.port), func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			p.t.Fatalf("nats-server %s exited at start", p.name)
		default:
		}
		return err
	})
}

// stop signals the server and waits for it to exit (SIGKILL after 30s).
func (p *natsProc) stop(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}
