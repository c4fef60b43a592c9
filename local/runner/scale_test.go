package runner_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
)

// scaledConfig copies config/ with every Service's annotations and
// container settings edited by the replacements, old → new.
func scaledConfig(t testing.TB, replacements ...string) string {
	t.Helper()
	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join(configDir(), "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("config files: %v", err)
	}
	r := strings.NewReplacer(replacements...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte(r.Replace(string(b))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const minScaleZero = `autoscaling.knative.dev/min-scale: "0"`

func retention(d string) []string {
	return []string{minScaleZero, minScaleZero + "\n        autoscaling.knative.dev/scale-to-zero-pod-retention-period: \"" + d + "\""}
}

func fnStatus(s *shop, name string) supervisor.Status {
	for _, f := range s.Status().Functions {
		if f.Service == name {
			return f
		}
	}
	return supervisor.Status{}
}

func placeOrders(t testing.TB, s *shop, prefix string, n int) {
	t.Helper()
	url := s.IngressURL() + "/default/default"
	for i := range n {
		body := fmt.Sprintf(`{"customer":"%s-%03d","beverage":"latte"}`, prefix, i)
		if resp, _ := testkit.PostBinary(t, url, testkit.Event(fmt.Sprintf("%s-%d", prefix, i), "/scale", "com.koffeeshop.order.placed", body)); resp.StatusCode != 202 {
			t.Fatalf("order %d: %d", i, resp.StatusCode)
		}
	}
}

// notifiedCustomers counts customer.notified events per customer.
func notifiedCustomers(c *testkit.Sink) map[string]int {
	out := map[string]int{}
	for _, e := range c.OfType("com.koffeeshop.customer.notified") {
		var n notified
		if err := e.DataAs(&n); err == nil {
			out[n.Customer]++
		}
	}
	return out
}

func TestScaleFromZeroAndBackToZero(t *testing.T) {
	s := startShopWith(t, shopOptions{configDir: scaledConfig(t, retention("1s")...)})
	time.Sleep(300 * time.Millisecond)
	for _, f := range s.Status().Functions {
		if len(f.Instances) != 0 {
			t.Fatalf("%s has %d instances before any event; min-scale 0 means none", f.Service, len(f.Instances))
		}
	}
	placeOrders(t, s, "cold", 1)
	s.collector.WaitType(t, "com.koffeeshop.customer.notified", 1, 30*time.Second)
	for _, name := range []string{"take-order", "prepare-beverage", "notify"} {
		f := fnStatus(s, name)
		if f.LastColdStart <= 0 {
			t.Errorf("%s: no cold start recorded", name)
		}
		t.Logf("%s cold start: %s", name, f.LastColdStart)
	}
	// Back to zero after the 1s retention period without traffic.
	testkit.Eventually(t, 15*time.Second, "no instance after the last event", func() error {
		total := 0
		for _, f := range s.Status().Functions {
			total += len(f.Instances)
		}
		if total != 0 {
			return fmt.Errorf("still %d instances", total)
		}
		return nil
	})
	// And from zero again.
	placeOrders(t, s, "warm-again", 1)
	s.collector.WaitType(t, "com.koffeeshop.customer.notified", 2, 30*time.Second)
}

// watchScale polls a function's status until stop is closed and returns
// the most live instances seen and the most in flight at one instance.
func watchScale(s *shop, name string, stop <-chan struct{}) (peakLive, peakInFlight int) {
	for {
		f := fnStatus(s, name)
		live := 0
		for _, in := range f.Instances {
			if in.State != "draining" {
				live++
			}
			peakInFlight = max(peakInFlight, in.InFlight)
		}
		peakLive = max(peakLive, live)
		select {
		case <-stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestBurstScalesOutWithinMaxScale(t *testing.T) {
	s := startShopWith(t, shopOptions{
		configDir: scaledConfig(t, retention("2s")...),
		env:       map[string][]string{"prepare-beverage": {"BREW_TIME=250ms"}},
	})
	stop := make(chan struct{})
	var peakLive, peakInFlight int
	var wg sync.WaitGroup
	wg.Go(func() { peakLive, peakInFlight = watchScale(s, "prepare-beverage", stop) })
	const orders = 80
	placeOrders(t, s, "burst", orders)
	s.collector.WaitType(t, "com.koffeeshop.customer.notified", orders, 90*time.Second)
	close(stop)
	wg.Wait()
	got := notifiedCustomers(s.collector)
	if len(got) != orders {
		t.Fatalf("%d customers notified, want %d", len(got), orders)
	}
	t.Logf("prepare-beverage: peak %d live instances, peak %d in flight at one instance", peakLive, peakInFlight)
	if peakLive < 2 {
		t.Errorf("a burst of %d slow orders ran on %d instance(s); it should scale out", orders, peakLive)
	}
	if peakLive > 5 {
		t.Errorf("%d live instances, over max-scale 5", peakLive)
	}
	if peakInFlight > 10 {
		t.Errorf("%d requests in flight at one instance, over containerConcurrency 10", peakInFlight)
	}
}

func TestKilledInstanceLosesNoEvent(t *testing.T) {
	s := startShopWith(t, shopOptions{
		configDir: scaledConfig(t, retention("5s")...),
		env:       map[string][]string{"prepare-beverage": {"BREW_TIME=400ms"}},
	})
	const orders = 40
	placeOrders(t, s, "kill", orders)
	// Wait for a barista with work in hand, then SIGKILL it.
	var victim supervisor.InstanceStatus
	testkit.WaitFor(t, 30*time.Second, "a busy prepare-beverage instance", func() bool {
		for _, in := range fnStatus(s, "prepare-beverage").Instances {
			if in.State == "ready" && in.InFlight > 0 {
				victim = in
				return true
			}
		}
		return false
	})
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %s (pid %d) with %d in flight", victim.Name, victim.PID, victim.InFlight)
	s.collector.WaitType(t, "com.koffeeshop.customer.notified", orders, 90*time.Second)
	got := notifiedCustomers(s.collector)
	if len(got) != orders {
		t.Fatalf("%d of %d orders reached customer.notified after the kill", len(got), orders)
	}
	dups := 0
	for _, n := range got {
		dups += n - 1
	}
	t.Logf("%d orders, %d lost, %d duplicate notifications", orders, orders-len(got), dups)
	for _, in := range fnStatus(s, "prepare-beverage").Instances {
		if in.Name == victim.Name {
			t.Errorf("the killed instance %s is still listed", in.Name)
		}
	}
}

// startNATSServer runs nats-server as its own process with JetStream on a
// free loopback port.
func startNATSServer(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "nats-server"), "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", dir, "--ports_file_dir", dir)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	portsFile := filepath.Join(dir, fmt.Sprintf("nats-server_%d.ports", cmd.Process.Pid))
	var url string
	testkit.Eventually(t, 20*time.Second, "nats-server started", func() error {
		b, err := os.ReadFile(portsFile)
		if err != nil {
			return err
		}
		var ports struct{ Nats []string }
		if err := json.Unmarshal(b, &ports); err != nil || len(ports.Nats) == 0 {
			return fmt.Errorf("ports file %q: %v", b, err)
		}
		url = ports.Nats[0]
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "nats://"), time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
	return url
}

func triggerDelivered(s *shop, name string) int64 {
	for _, tr := range s.Status().Triggers {
		if tr.Name == name {
			return tr.Delivered
		}
	}
	return 0
}

// TestTwoRunnersShareDurableConsumers: a second runner on the same NATS
// that runs only prepare-beverage takes part of the load from the same
// durable consumer, and no order is brewed twice.
func TestTwoRunnersShareDurableConsumers(t *testing.T) {
	url := startNATSServer(t)
	cfg := scaledConfig(t, retention("5s")...)
	env := map[string][]string{"prepare-beverage": {"BREW_TIME=150ms"}}
	a := startShopWith(t, shopOptions{configDir: cfg, natsURL: url, name: "a", env: env})
	b := startShopWith(t, shopOptions{configDir: cfg, natsURL: url, name: "b", env: env, only: []string{"prepare-beverage"}, collector: a.collector})
	// Besides prepare-beverage, b runs notify, the dead-letter sink of the
	// prepare-beverage Trigger, with no Trigger of its own.
	if fs := b.Status().Functions; len(fs) != 2 || fs[0].Service != "notify" || fs[1].Service != "prepare-beverage" {
		t.Fatalf("runner b runs %+v, want prepare-beverage and its dead-letter sink notify", fs)
	}
	for _, tr := range b.Status().Triggers {
		if tr.Name != "default/prepare-beverage" {
			t.Errorf("runner b runs the Trigger %s", tr.Name)
		}
	}
	const orders = 60
	placeOrders(t, a, "shared", orders)
	a.collector.WaitType(t, "com.koffeeshop.customer.notified", orders, 90*time.Second)
	baristas := map[string]int{}
	for _, e := range a.collector.OfType("com.koffeeshop.beverage.ready") {
		var r notified
		_ = e.DataAs(&r)
		switch {
		case strings.Contains(r.Barista, "-a-"):
			baristas["a"]++
		case strings.Contains(r.Barista, "-b-"):
			baristas["b"]++
		}
	}
	da, db := triggerDelivered(a, "default/prepare-beverage"), triggerDelivered(b, "default/prepare-beverage")
	t.Logf("runner a brewed %d, runner b brewed %d (deliveries %d + %d)", baristas["a"], baristas["b"], da, db)
	if baristas["a"] == 0 || baristas["b"] == 0 {
		t.Errorf("the load was not shared: %v", baristas)
	}
	if da+db != orders {
		t.Errorf("%d + %d prepare-beverage deliveries for %d orders: some order was brewed twice or not at all", da, db, orders)
	}
	if got := len(notifiedCustomers(a.collector)); got != orders {
		t.Errorf("%d customers notified, want %d", got, orders)
	}
}
