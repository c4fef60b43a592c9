//go:build faults

package runner_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/gobuild"
	"github.com/koffeeshop/koffeeshop/local/runner"
)

// runnerProc is the koffeeshop runner as its own process.
type runnerProc struct {
	t    testing.TB
	args []string
	addr string
	out  *logFile
	cmd  *exec.Cmd
	done chan struct{}
}

func buildRunner(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(binDir, "koffeeshop")
	out, err := gobuild.Command(context.Background(), bin, "github.com/koffeeshop/koffeeshop/local").CombinedOutput()
	if err != nil {
		t.Fatalf("go build the runner: %v\n%s", err, out)
	}
	return bin
}

func startRunnerProc(t testing.TB, bin string, args ...string) *runnerProc {
	t.Helper()
	p := &runnerProc{t: t, args: append([]string{bin}, args...), out: newLogFile(t, "runner")}
	for i, a := range args {
		if a == "-addr" {
			p.addr = args[i+1]
		}
	}
	p.start()
	t.Cleanup(func() {
		if p.cmd == nil {
			return
		}
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *runnerProc) start() {
	p.t.Helper()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := client.Get("http://" + p.addr + "/health/readiness")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			p.t.Fatalf("the runner exited at start:\n%s", tail(p.out.path, 40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the runner did not get ready at %s: %v", p.addr, err)
		}
	}
}

// functionPIDs are the function processes the runner reports.
func (p *runnerProc) functionPIDs() []int {
	resp, err := http.Get("http://" + p.addr + "/status")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st runner.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		p.t.Fatal(err)
	}
	var pids []int
	for _, f := range st.Functions {
		for _, in := range f.Instances {
			pids = append(pids, in.PID)
		}
	}
	return pids
}

func (p *runnerProc) kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// TestFaultKill9Runner: SIGKILL the runner process while orders stream in,
// start it again on the same address and data dir, and every order that got
// a 202 reaches customer.notified.
func TestFaultKill9Runner(t *testing.T) {
	bin := buildRunner(t)
	obs := newSink(t)
	cfg := faultConfig(t, "3s", obs.URL(), nil, "value: 1s", "value: 100ms")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := []string{"-config", cfg, "-bin-dir", binDir, "-addr", addr, "-data-dir", t.TempDir()}
	p := startRunnerProc(t, bin, args...)

	const orders = 300
	l := startLoad(t, "http://"+addr+"/default/default", "kill9", orders, 20*time.Millisecond, 60*time.Second)
	l.waitSent(t, 100)
	pids := p.functionPIDs()
	p.kill9()
	killedAt, killedAfter := time.Now(), l.sent()
	// The functions die with the runner (Pdeathsig).
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		if err := testkit.Poll(time.Until(deadline), func() error {
			if alive(pid) {
				return errors.New("alive")
			}
			return nil
		}); err != nil {
			t.Errorf("function process %d outlived the killed runner", pid)
		}
	}
	p.start()
	down := time.Since(killedAt)

	injected := fmt.Sprintf("SIGKILL of the runner process (%d function processes with it) after %d orders sent, restarted on the same address and data dir, ingress down %s", len(pids), killedAfter, down.Round(time.Millisecond))
	tally(t, "kill-9 runner", injected, l, obs, 120*time.Second)
}

// TestFaultNATSServerRestart: an external nats-server is stopped (SIGTERM,
// then later SIGKILL) and started again on the same port and store while
// orders stream in. While it is down every ingress answer is 503; the
// runner reconnects by itself and the dispatchers resume.
func TestFaultNATSServerRestart(t *testing.T) {
	ns := startNATSProc(t, "nats", freePort(t), t.TempDir())
	obs := newSink(t)
	cfg := faultConfig(t, "3s", obs.URL(), nil)
	s := startQuietShop(t, quietOptions{configDir: cfg, natsURL: ns.URL()})
	url := s.IngressURL() + "/default/default"

	type outage struct {
		how      string
		from, to time.Time
	}
	var outages []outage
	const orders = 600
	l := startLoad(t, url, "natsrestart", orders, 20*time.Millisecond, 60*time.Second)
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		l.waitSent(t, 100+250*i)
		ns.stop(sig)
		from := time.Now()
		time.Sleep(2500 * time.Millisecond)
		to := time.Now()
		ns.start()
		outages = append(outages, outage{how: sig.String(), from: from, to: to})
	}
	l.wait()

	var notes []string
	for _, o := range outages {
		during, bad := 0, map[int]int{}
		var back time.Duration = -1
		for _, so := range l.snapshot() {
			if !so.start.Before(o.from) && !so.end.After(o.to) {
				during++
				if so.status != http.StatusServiceUnavailable {
					bad[so.status]++
				}
			}
			if so.status == http.StatusAccepted && so.start.After(o.to) && (back < 0 || so.end.Sub(o.to) < back) {
				back = so.end.Sub(o.to)
			}
		}
		if during == 0 {
			t.Errorf("no order was answered while nats-server was down (%s)", o.how)
		}
		if len(bad) > 0 {
			t.Errorf("while nats-server was down (%s), of %d answers these were not 503: %v (status → count; 0: no answer)", o.how, during, bad)
		}
		if back < 0 {
			t.Errorf("no order was accepted after nats-server came back (%s)", o.how)
		}
		notes = append(notes, fmt.Sprintf("%s for %s: %d answers while down, all 503; first 202 %s after restart", o.how, o.to.Sub(o.from).Round(time.Millisecond), during, back.Round(time.Millisecond)))
	}

	res := tally(t, "nats-server restart", "external nats-server stopped twice under load and restarted on the same port and store ("+strings.Join(notes, "; ")+")", l, obs, 120*time.Second)
	if res.lost > 0 {
		logConsumers(t, ns.URL())
		for _, tr := range s.Status().Triggers {
			t.Logf("trigger %s: %+v", tr.Name, tr)
		}
	}
}

// logConsumers logs the state of every Trigger's consumer, to tell a
// dispatcher that stopped pulling from one that cannot deliver.
func logConsumers(t testing.TB, url string) {
	nc, err := nats.Connect(url)
	if err != nil {
		t.Logf("consumers: %v", err)
		return
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, broker.Ref{Namespace: "default", Name: "default"}.StreamName())
	if err != nil {
		t.Logf("stream: %v", err)
		return
	}
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		t.Logf("consumer %s: pending %d, ack pending %d, waiting pulls %d, redelivered %d, delivered %d, ack floor %d",
			ci.Name, ci.NumPending, ci.NumAckPending, ci.NumWaiting, ci.NumRedelivered, ci.Delivered.Consumer, ci.AckFloor.Consumer)
	}
}

// faultServer is a subscriber that misbehaves on purpose, one way per path.
type faultServer struct {
	mu       sync.Mutex
	attempts map[string][]time.Time // path + " " + ce-id
	srv      *httptest.Server
}

func newFaultServer(t testing.TB) *faultServer {
	f := &faultServer{attempts: map[string][]time.Time{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("ce-id")
		f.mu.Lock()
		f.attempts[r.URL.Path+" "+id] = append(f.attempts[r.URL.Path+" "+id], time.Now())
		f.mu.Unlock()
		switch r.URL.Path {
		case "/crash":
			// The process dies mid-request: the connection just closes.
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		case "/hang":
			// Read the body first: only then does the server notice the
			// caller giving up.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
		case "/500":
			http.Error(w, "boom: "+id, http.StatusInternalServerError)
		case "/429":
			http.Error(w, "too many requests: "+id, http.StatusTooManyRequests)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *faultServer) attemptsOf(path, id string) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.attempts[path+" "+id]...)
}

// TestFaultBulkhead: Triggers whose subscribers crash, hang past their
// timeout, or answer 500 or 429 retry as their DeliverySpec says, then
// dead-letter with Knative's error extensions, while orders flowing at the
// same time through the three functions are all notified, as fast as
// without the faults.
func TestFaultBulkhead(t *testing.T) {
	const (
		retries    = 2
		backoff    = 200 * time.Millisecond
		timeout    = time.Second
		perKind    = 10
		typePrefix = "com.koffeeshop.fault."
	)
	faults := newFaultServer(t)
	dls := newSink(t)
	obs := newSink(t)
	kinds := []struct {
		name string
		code int // the knativeerrorcode of its dead letters
	}{{"crash", 500}, {"hang", 500}, {"500", 500}, {"429", 429}}
	extra := map[string]string{}
	for _, k := range kinds {
		extra["fault-"+k.name+".yaml"] = fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: fault-%[1]s
  namespace: default
spec:
  broker: default
  filter:
    attributes:
      type: %[2]s%[1]s
  subscriber:
    uri: %[3]s/%[1]s
  delivery:
    retry: %[4]d
    backoffPolicy: linear
    backoffDelay: PT0.2S
    timeout: PT1S
    deadLetterSink:
      uri: %[5]s
`, k.name, typePrefix, faults.srv.URL, retries, dls.URL())
	}
	cfg := faultConfig(t, "", obs.URL(), extra)
	s := startQuietShop(t, quietOptions{configDir: cfg})
	url := s.IngressURL() + "/default/default"

	// Warm up, then a baseline of the same load without faults.
	warm := startLoad(t, url, "warmup", 10, 20*time.Millisecond, 10*time.Second)
	tallyQuiet(t, warm, obs)
	base := startLoad(t, url, "baseline", 100, 20*time.Millisecond, 30*time.Second)
	baseRes := tally(t, "bulkhead baseline (no fault)", "nothing", base, obs, 60*time.Second)

	l := startLoad(t, url, "bulkhead", 250, 20*time.Millisecond, 60*time.Second)
	l.waitSent(t, 25)
	sentAt := map[string]time.Time{}
	for _, k := range kinds {
		for i := range perKind {
			id := fmt.Sprintf("%s-%d", k.name, i)
			resp, _ := testkit.PostBinary(t, url, testkit.Event(id, "/faults", typePrefix+k.name, `{"fault":true}`))
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("fault event %s: %d", id, resp.StatusCode)
			}
			sentAt[id] = time.Now()
		}
	}
	res := tally(t, "bulkhead regular orders", fmt.Sprintf("%d events to each of 4 failing Triggers (crash, hang past the 1s timeout, 500, 429) while the orders flowed", perKind), l, obs, 90*time.Second)

	// Every fault event ends in the dead-letter sink.
	// What has not arrived by then is counted lost below.
	_ = testkit.Poll(60*time.Second, func() error {
		if n := dls.len(); n < len(kinds)*perKind {
			return fmt.Errorf("%d dead letters", n)
		}
		return nil
	})
	// Late duplicates (redeliveries) get a moment to show up.
	time.Sleep(time.Second)
	dead := map[string][]sinkEvent{}
	for _, e := range dls.all() {
		dead[e.ev.ID()] = append(dead[e.ev.ID()], e)
	}
	for _, k := range kinds {
		delivered, dups, lost := 0, 0, 0
		var gaps []string
		for i := range perKind {
			id := fmt.Sprintf("%s-%d", k.name, i)
			at := faults.attemptsOf("/"+k.name, id)
			if len(at) != retries+1 {
				t.Errorf("%s: %d attempts, want %d (retry %d)", id, len(at), retries+1, retries)
			}
			// The n-th retry waits backoffDelay × n (linear) after the
			// previous attempt ended.
			for n := 1; n < len(at); n++ {
				want := backoff * time.Duration(n)
				if k.name == "hang" {
					want += timeout
				}
				gap := at[n].Sub(at[n-1])
				if gap < want-20*time.Millisecond || gap > want+10*time.Second {
					t.Errorf("%s: retry %d came %s after the previous attempt, want about %s", id, n, gap, want)
				}
				if i == 0 {
					gaps = append(gaps, gap.Round(10*time.Millisecond).String())
				}
			}
			evs := dead[id]
			if len(evs) == 0 {
				lost++
				t.Errorf("%s never reached the dead-letter sink", id)
				continue
			}
			delivered++
			dups += len(evs) - 1
			e := evs[0].ev
			ext := e.Extensions()
			if d := fmt.Sprint(ext["knativeerrordest"]); d != faults.srv.URL+"/"+k.name {
				t.Errorf("%s: knativeerrordest %q", id, d)
			}
			if c := fmt.Sprint(ext["knativeerrorcode"]); c != strconv.Itoa(k.code) {
				t.Errorf("%s: knativeerrorcode %q, want %d", id, c, k.code)
			}
			data, err := base64.StdEncoding.DecodeString(fmt.Sprint(ext["knativeerrordata"]))
			switch {
			case err != nil:
				t.Errorf("%s: knativeerrordata: %v", id, err)
			case k.name == "500" && string(data) != "boom: "+id+"\n":
				t.Errorf("%s: knativeerrordata %q", id, data)
			case k.name == "429" && string(data) != "too many requests: "+id+"\n":
				t.Errorf("%s: knativeerrordata %q", id, data)
			case (k.name == "crash" || k.name == "hang") && !strings.HasPrefix(string(data), "dispatch error"):
				t.Errorf("%s: knativeerrordata %q", id, data)
			}
			if e.Type() != typePrefix+k.name || string(e.Data()) != `{"fault":true}` {
				t.Errorf("%s: the dead letter is not the original event: %s", id, e)
			}
		}
		st := triggerStatus(s.Runner, "default/fault-"+k.name)
		if st.Retried != perKind*retries || st.DeadLettered != perKind || st.Delivered != 0 {
			t.Errorf("fault-%s: %+v, want %d retried and %d dead-lettered", k.name, st, perKind*retries, perKind)
		}
		t.Logf("RESULT bulkhead %s subscriber: sent %d, accepted %d, delivered %d (to the dead-letter sink, after %d attempts each, retry gaps %s), duplicates %d, lost %d",
			k.name, perKind, perKind, delivered, retries+1, strings.Join(gaps, ", "), dups, lost)
	}

	// The functions were not touched by the faults.
	for _, name := range []string{"take-order", "prepare-beverage", "notify"} {
		st := triggerStatus(s.Runner, "default/"+name)
		if st.Retried != 0 || st.DeadLettered != 0 || st.Terminated != 0 {
			t.Errorf("%s: %+v; the faults of other Triggers leaked into it", name, st)
		}
	}
	bp50, bp95 := percentile(baseRes.latencies, 50), percentile(baseRes.latencies, 95)
	fp50, fp95 := percentile(res.latencies, 50), percentile(res.latencies, 95)
	t.Logf("202→customer.notified: baseline p50 %s p95 %s; under faults p50 %s p95 %s", bp50, bp95, fp50, fp95)
	// Had the failing Triggers held anything the functions' Triggers need
	// (a shared connection pool, worker or pull), the orders could wait
	// behind up to 30 hanging attempts of 1s each. The margin absorbs a busy
	// machine: other builds share these two cores.
	if fp95 > bp95+3*time.Second {
		t.Errorf("orders slowed down under the faults of other Triggers: p95 %s, baseline %s", fp95, bp95)
	}
}

// tallyQuiet waits for a load's accepted orders without a RESULT line.
func tallyQuiet(t testing.TB, l *load, obs *sink) {
	t.Helper()
	l.wait()
	testkit.Eventually(t, 60*time.Second, "every accepted order notified", func() error {
		count, _ := obs.notified()
		missing := 0
		for _, o := range l.snapshot() {
			if o.status == http.StatusAccepted && count[o.customer] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d accepted orders not notified", missing)
		}
		return nil
	})
}
