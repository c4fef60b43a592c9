package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/httpserver"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
	"github.com/koffeeshop/koffeeshop/local/manifest"
	"github.com/koffeeshop/koffeeshop/local/runner"
)

var defaultBroker = broker.Ref{Namespace: "default", Name: "default"}

// serveHTTP serves h on a random loopback port with the server settings of
// the runner's ingress, until the returned func is called.
func serveHTTP(h http.Handler) (url string, stop func(), err error) {
	return serveCounting(h, nil)
}

// serveCounting is serveHTTP counting the connections it accepts in conns.
func serveCounting(h http.Handler, conns *atomic.Int64) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	srv := httpserver.New(h, httpserver.Options{})
	if conns != nil {
		srv.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return "http://" + ln.Addr().String(), func() {
		_ = srv.Close()
		<-done
	}, nil
}

// noop answers every request 202 after reading its body: the HTTP limit.
func noop(status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(status)
	})
}

// newClient is an HTTP client that keeps up to conns connections open.
func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

// order is the data of an order.placed event for customer.
func order(customer string) string {
	return `{"customer":"` + customer + `","beverage":"latte"}`
}

// postEvent POSTs a binary-mode CloudEvent and wants a 202.
func postEvent(ctx context.Context, c *http.Client, url, source, id, typ, data string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Ce-Specversion", "1.0")
	req.Header.Set("Ce-Id", id)
	req.Header.Set("Ce-Source", source)
	req.Header.Set("Ce-Type", typ)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// copyConfig copies the manifests of src into a new directory under tmp
// with every replacement (old, new, ...) applied.
func copyConfig(src, tmp string, replacements ...string) (string, error) {
	files, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("no manifests in %s: %v", src, err)
	}
	dst, err := os.MkdirTemp(tmp, "config-")
	if err != nil {
		return "", err
	}
	r := strings.NewReplacer(replacements...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), []byte(r.Replace(string(b))), 0o644); err != nil {
			return "", err
		}
	}
	return dst, nil
}

// functions builds the function executables once.
func (b *bench) functions(ctx context.Context) (string, error) {
	if b.binDir != "" {
		return b.binDir, nil
	}
	dir := filepath.Join(b.tmp, "bin")
	b.progress.Info("building functions", "dir", dir)
	if err := runner.Build(ctx, []string{b.opts.configDir}, dir); err != nil {
		return "", err
	}
	b.binDir = dir
	return dir, nil
}

// shop is a running runner.
type shop struct {
	*runner.Runner
	stop func() error
}

// startShop runs the shop from configDir, with prepare-beverage brewing
// for 0 s, until stop is called. With -board=false, the runner is limited
// to the Services of configDir and their Triggers, which leaves out the
// web board.
func (b *bench) startShop(ctx context.Context, configDir string) (*shop, error) {
	var only []string
	if !b.opts.board {
		set, err := manifest.LoadDir(ctx, configDir)
		if err != nil {
			return nil, err
		}
		for _, svc := range set.Services {
			only = append(only, svc.Name)
		}
	}
	bin, err := b.functions(ctx)
	if err != nil {
		return nil, err
	}
	data, err := os.MkdirTemp(b.tmp, "data-")
	if err != nil {
		return nil, err
	}
	env := map[string][]string{"prepare-beverage": {"BREW_TIME=0s"}}
	if b.opts.profileDir != "" {
		// Each function instance writes a profile of its life when it
		// stops.
		dir, err := filepath.Abs(filepath.Join(b.opts.profileDir, "functions"))
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return nil, fmt.Errorf("profile dir: %w", err)
		}
		for _, fn := range []string{"take-order", "prepare-beverage", "notify"} {
			env[fn] = append(env[fn], serve.EnvCPUProfileDir+"="+dir)
		}
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	// The shop's goroutines, those of its embedded NATS server too, carry
	// the shop's label in CPU profiles.
	rctx = pprof.WithLabels(rctx, pprof.Labels(partLabel, partShop))
	pprof.SetGoroutineLabels(rctx)
	defer pprof.SetGoroutineLabels(ctx)
	r, err := runner.New(rctx, runner.Options{
		ConfigDirs: []string{configDir},
		Only:       only,
		NATS:       runner.NATSOptions{DataDir: data, Port: -1},
		HTTP:       runner.HTTPOptions{Addr: "127.0.0.1:0"},
		Functions:  runner.FunctionOptions{BinDir: bin, Env: env, Output: b.output()},
	}, b.log)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("runner: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			return errors.New("runner did not stop within 60s")
		}
	})
	return &shop{Runner: r, stop: stop}, nil
}

// watcher wakes whoever waits for the event of a given type that names a
// customer, as soon as it is published into the Broker. It listens with a
// plain NATS subscription on the type's subject, so observing costs no
// extra Trigger.
type watcher struct {
	nc  *nats.Conn
	mu  sync.Mutex
	due map[string]chan struct{}
}

func watch(natsURL string, typ string) (*watcher, error) {
	nc, err := nats.Connect(natsURL, nats.Name("koffeeshop-bench-watcher"))
	if err != nil {
		return nil, fmt.Errorf("connect watcher: %w", err)
	}
	w := &watcher{nc: nc, due: map[string]chan struct{}{}}
	_, err = nc.Subscribe(defaultBroker.TypeSubject(typ), func(m *nats.Msg) {
		ev, err := broker.Decode(m.Header, m.Data)
		if err != nil {
			return
		}
		var data struct {
			Customer string `json:"customer"`
		}
		if ev.DataAs(&data) != nil {
			return
		}
		w.mu.Lock()
		ch := w.due[data.Customer]
		delete(w.due, data.Customer)
		w.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	return w, nil
}

// expect returns a channel closed when the event for customer arrives.
func (w *watcher) expect(customer string) <-chan struct{} {
	ch := make(chan struct{})
	w.mu.Lock()
	w.due[customer] = ch
	w.mu.Unlock()
	return ch
}

func (w *watcher) forget(customer string) {
	w.mu.Lock()
	delete(w.due, customer)
	w.mu.Unlock()
}

func (w *watcher) close() { w.nc.Close() }

// placeAndWait places an order for customer and waits for its event.
func placeAndWait(ctx context.Context, c *http.Client, w *watcher, url, customer string) error {
	arrived := w.expect(customer)
	if err := postEvent(ctx, c, url, "/bench", customer, coffee.TypeOrderPlaced, order(customer)); err != nil {
		w.forget(customer)
		return err
	}
	select {
	case <-arrived:
		return nil
	case <-ctx.Done():
		w.forget(customer)
		return ctx.Err()
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func itoa(i int) string { return strconv.Itoa(i) }

// output is where the function processes write: nowhere unless -debug.
func (b *bench) output() io.Writer {
	if b.opts.debug {
		return os.Stderr
	}
	return io.Discard
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuPer runs f and returns f's error and the CPU time this process spent
// per operation while it ran, in microseconds: everything in the process
// counts, the load generator, the servers and the embedded NATS alike.
func cpuPer(ops int, f func() error) (float64, error) {
	start := cpuTime()
	err := f()
	return float64(cpuTime()-start) / float64(time.Microsecond) / float64(ops), err
}
