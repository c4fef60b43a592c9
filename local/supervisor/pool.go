// Package supervisor runs the instances of a function as OS processes, the
// way Knative Serving runs the pods of a Revision: it starts them, probes
// their readiness, balances requests over the ready ones within
// containerConcurrency, drains them before stopping them and replaces those
// that die.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Spec describes the processes of one Service.
type Spec struct {
	Namespace string
	Name      string
	// InstanceTag, when set, goes into instance names to tell apart the
	// instances of runners that share a NATS.
	InstanceTag string
	// Binary is the function's executable.
	Binary string
	// Env is the container's environment, KEY=VALUE.
	Env []string
	// ContainerConcurrency is the hard limit of requests an instance takes
	// at once; 0 means no limit.
	ContainerConcurrency int
	// ReadinessPath is probed until it answers 200.
	ReadinessPath string
	// ReadyTimeout bounds a start; an instance not ready by then is killed.
	ReadyTimeout time.Duration
	// DrainTimeout bounds how long a stopping instance may finish its work.
	DrainTimeout time.Duration
}

type state int

const (
	starting state = iota
	ready
	draining
)

// An instance has one owner: the goroutine that runs Pool.own for it. The
// owner does the instance's whole life: it starts the process, awaits its
// readiness, serves, and, once asked to stop, drains it, sends SIGTERM, then
// SIGKILL after the deadline, and waits for the exit. Everyone else only asks:
// requestStopLocked closes stop, once, with a reason. KillOne alone signals
// the process itself, as a crash would, reading proc under p.mu.
type instance struct {
	name    string    // immutable
	started time.Time // immutable
	// stop is closed, once, by requestStopLocked.
	stop     chan struct{}
	stopOnce sync.Once

	// The fields below are guarded by p.mu. url, proc and readyIn are
	// written only by the owner, under p.mu, so the owner may read them
	// without it.
	url      *url.URL
	proc     *os.Process // nil until the process started
	state    state       // draining once a stop is requested
	stopWhy  string      // why the stop was requested
	inflight int
	readyIn  time.Duration
}

// Pool is the set of instances of one Service.
type Pool struct {
	spec       Spec
	scaling    Scaling
	scaler     *autoscaler
	demand     DemandFunc
	coldStarts func(time.Duration)
	log        *slog.Logger
	out        io.Writer
	outMu      *sync.Mutex
	probe      *http.Client

	mu            sync.Mutex
	desired       int
	seq           int
	insts         map[*instance]struct{}
	changed       chan struct{} // closed and replaced on every change
	waiting       int
	backlog       int
	lastDemand    time.Time
	activatedAt   time.Time     // when the Pool last left zero
	lastColdStart time.Duration // from leaving zero to the first ready instance
	failures      int           // consecutive instances that died before ready
	notBefore     time.Time     // crash-loop backoff
	kick          chan struct{}

	// Test hooks, nil outside tests, called by an instance's owner just
	// before and just after its process is started.
	beforeExec func(instance string)
	afterExec  func(instance string, pid int)
}

// Options are the optional parts of a Pool.
type Options struct {
	// Demand reports the Service's backlog waiting in JetStream.
	Demand DemandFunc
	// ColdStart is told the duration of every scale from zero.
	ColdStart func(time.Duration)
}

// NewPool returns a Pool for spec scaled by sc; instance output goes to
// out, one line at a time behind the instance's name, serialised with outMu.
func NewPool(spec Spec, sc Scaling, o Options, log *slog.Logger, out io.Writer, outMu *sync.Mutex) *Pool {
	if spec.ReadinessPath == "" {
		spec.ReadinessPath = "/health/readiness"
	}
	if spec.ReadyTimeout <= 0 {
		spec.ReadyTimeout = 30 * time.Second
	}
	if spec.DrainTimeout <= 0 {
		spec.DrainTimeout = 30 * time.Second
	}
	if sc.Tick <= 0 {
		sc.Tick = 100 * time.Millisecond
	}
	if sc.StableWindow <= 0 {
		sc.StableWindow = 60 * time.Second
	}
	if sc.PanicWindow <= 0 {
		sc.PanicWindow = sc.StableWindow / 10
	}
	if sc.PanicThreshold <= 0 {
		sc.PanicThreshold = 2
	}
	if sc.IdleWindow <= 0 {
		sc.IdleWindow = sc.StableWindow
	}
	if sc.Target <= 0 {
		sc.Target = 70
	}
	if sc.Total <= 0 {
		sc.Total = 100
	}
	if out == nil {
		out = io.Discard
	}
	if outMu == nil {
		outMu = &sync.Mutex{}
	}
	p := &Pool{
		spec:       spec,
		scaling:    sc,
		demand:     o.Demand,
		coldStarts: o.ColdStart,
		log:        log.With("service", spec.Name),
		out:        out,
		outMu:      outMu,
		probe:      &http.Client{Timeout: time.Second},
		insts:      map[*instance]struct{}{},
		changed:    make(chan struct{}),
		kick:       make(chan struct{}, 1),
		desired:    sc.clamp(sc.InitialScale),
		lastDemand: time.Now(),
	}
	p.scaler = newAutoscaler(spec.Namespace, spec.Name, sc, func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.readyLocked()
	})
	return p
}

// Name is the Service's name.
func (p *Pool) Name() string { return p.spec.Name }

func (p *Pool) readyLocked() int {
	n := 0
	for in := range p.insts {
		if in.state == ready {
			n++
		}
	}
	return n
}

func (p *Pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// broadcast wakes every Acquire waiting for a change; p.mu must be held.
func (p *Pool) broadcast() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Acquire returns the URL of the ready instance with the fewest requests in
// flight that is below containerConcurrency, waiting for one if none is.
func (p *Pool) Acquire(ctx context.Context) (*url.URL, func(), error) {
	counted := false
	defer func() {
		if counted {
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
		}
	}()
	for {
		p.mu.Lock()
		if in := p.pickLocked(); in != nil {
			in.inflight++
			p.mu.Unlock()
			var once sync.Once
			return in.url, func() { once.Do(func() { p.release(in) }) }, nil
		}
		if !counted {
			p.waiting++
			counted = true
		}
		if p.desired == 0 {
			// Scale from zero at once, as Knative's activator pokes the
			// autoscaler: the event waits unacknowledged in JetStream.
			p.lastDemand = time.Now()
			p.setDesiredLocked(p.scaling.clamp(max(1, p.scaling.ActivationScale)), "activation", 0)
		}
		ch := p.changed
		p.mu.Unlock()
		p.wake()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("service %s: %w", p.spec.Name, context.Cause(ctx))
		}
	}
}

func (p *Pool) pickLocked() *instance {
	var best *instance
	for in := range p.insts {
		if in.state != ready {
			continue
		}
		if cc := p.spec.ContainerConcurrency; cc > 0 && in.inflight >= cc {
			continue
		}
		if best == nil || in.inflight < best.inflight {
			best = in
		}
	}
	return best
}

func (p *Pool) release(in *instance) {
	p.mu.Lock()
	in.inflight--
	p.broadcast()
	p.mu.Unlock()
}

// Run keeps the desired number of instances until ctx is done, then drains
// and stops them all.
func (p *Pool) Run(ctx context.Context) {
	tick := time.NewTicker(p.scaling.Tick)
	defer tick.Stop()
	var wg sync.WaitGroup // the owners of instances
	for {
		p.reconcile(ctx, &wg)
		select {
		case <-ctx.Done():
			p.stopAll()
			wg.Wait()
			return
		case <-p.kick:
		case now := <-tick.C:
			p.autoscale(ctx, now)
		}
	}
}

func (p *Pool) reconcile(ctx context.Context, wg *sync.WaitGroup) {
	p.mu.Lock()
	defer p.mu.Unlock()
	live := 0
	for in := range p.insts {
		if in.state != draining {
			live++
		}
	}
	for ; live < p.desired && time.Now().After(p.notBefore); live++ {
		in := p.newInstanceLocked()
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.own(ctx, in)
		}()
	}
	for ; live > p.desired; live-- {
		victim := p.victimLocked()
		if victim == nil {
			break
		}
		p.requestStopLocked(victim, "scale down")
	}
}

// victimLocked picks the instance to stop on scale down: a starting one
// first, else the ready one with the least work.
func (p *Pool) victimLocked() *instance {
	var v *instance
	for in := range p.insts {
		switch {
		case in.state == draining:
		case v == nil:
			v = in
		case in.state == starting && v.state != starting:
			v = in
		case in.state == v.state && in.inflight < v.inflight:
			v = in
		}
	}
	return v
}

func (p *Pool) newInstanceLocked() *instance {
	p.seq++
	name := fmt.Sprintf("%s-%d", p.spec.Name, p.seq)
	if p.spec.InstanceTag != "" {
		name = fmt.Sprintf("%s-%s-%d", p.spec.Name, p.spec.InstanceTag, p.seq)
	}
	in := &instance{
		name:    name,
		state:   starting,
		started: time.Now(),
		stop:    make(chan struct{}),
	}
	p.insts[in] = struct{}{}
	return in
}

// requestStopLocked asks the owner of in to drain and stop it; p.mu must be
// held. Only the first request counts.
func (p *Pool) requestStopLocked(in *instance, why string) {
	in.stopOnce.Do(func() {
		in.state = draining
		in.stopWhy = why
		close(in.stop)
	})
}

// stopRequested reports whether in was asked to stop.
func stopRequested(in *instance) bool {
	select {
	case <-in.stop:
		return true
	default:
		return false
	}
}

// errStopRequested ends awaitReady when the instance is asked to stop.
var errStopRequested = errors.New("stop requested")

// own is the life of an instance, run by its owner goroutine: it returns
// once the instance's process has exited and the instance left the Pool.
func (p *Pool) own(ctx context.Context, in *instance) {
	if stopRequested(in) { // asked to stop before it started
		p.forget(in, true)
		return
	}
	cmd, err := p.start(in)
	if err != nil {
		p.log.Error("instance failed to start", "instance", in.name, "err", err)
		p.forget(in, false)
		return
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	p.serve(ctx, in, cmd.Process, exited)
	<-exited
	expected := stopRequested(in)
	if !expected {
		p.log.Warn("instance exited", "instance", in.name, "pid", cmd.Process.Pid, "err", waitErr)
	}
	p.forget(in, expected)
}

// serve takes a started process to ready and keeps it until it exits or is
// asked to stop; it returns once the process exited or was sent SIGKILL.
func (p *Pool) serve(ctx context.Context, in *instance, proc *os.Process, exited <-chan struct{}) {
	// Asked to stop while the process was being started: it never becomes
	// ready.
	if stopRequested(in) {
		p.terminate(in, proc, exited)
		return
	}
	if err := p.awaitReady(ctx, in, exited); err != nil {
		if ctx.Err() != nil && !stopRequested(in) {
			p.mu.Lock()
			p.requestStopLocked(in, "shutdown")
			p.mu.Unlock()
		}
		if stopRequested(in) {
			p.terminate(in, proc, exited)
			return
		}
		p.log.Error("instance did not become ready", "instance", in.name, "err", err)
		_ = proc.Kill()
		return
	}
	if !p.markReady(in, proc.Pid) {
		p.terminate(in, proc, exited) // asked to stop as it became ready
		return
	}
	select {
	case <-exited:
	case <-in.stop:
		p.terminate(in, proc, exited)
	}
}

// markReady turns a starting instance ready, unless it was asked to stop.
func (p *Pool) markReady(in *instance, pid int) bool {
	var coldStart time.Duration
	p.mu.Lock()
	if in.state != starting {
		p.mu.Unlock()
		return false
	}
	in.state = ready
	in.readyIn = time.Since(in.started)
	p.failures = 0
	if !p.activatedAt.IsZero() {
		coldStart = time.Since(p.activatedAt)
		p.lastColdStart = coldStart
		p.activatedAt = time.Time{}
	}
	p.broadcast()
	p.mu.Unlock()
	if coldStart > 0 && p.coldStarts != nil {
		p.coldStarts(coldStart)
	}
	p.log.Info("instance ready", "instance", in.name, "pid", pid, "url", in.url.String(), "coldStart", in.readyIn.Round(time.Millisecond))
	return true
}

// start creates the instance's listening socket, hands it to the new
// process as fd 3, and starts the process.
func (p *Pool) start(in *instance) (*exec.Cmd, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("listener fd: %w", err)
	}
	defer f.Close()
	addr := ln.Addr().(*net.TCPAddr)
	u := &url.URL{Scheme: "http", Host: addr.String(), Path: "/"}
	p.mu.Lock()
	in.url = u
	p.mu.Unlock()

	cmd := exec.Command(p.spec.Binary)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Env = append(os.Environ(), p.spec.Env...)
	cmd.Env = append(cmd.Env,
		"FUNC_LISTEN_FD=3",
		"PORT="+strconv.Itoa(addr.Port),
		"K_SERVICE="+p.spec.Name,
		"K_CONFIGURATION="+p.spec.Name,
		"K_REVISION="+p.spec.Name+"-00001",
		"KOFFEESHOP_INSTANCE="+in.name,
		"FUNC_DRAIN_TIMEOUT="+p.spec.DrainTimeout.String(),
	)
	w := &lineWriter{mu: p.outMu, out: p.out, prefix: []byte(in.name + " | ")}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = procAttr()
	if p.beforeExec != nil {
		p.beforeExec(in.name)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.spec.Binary, err)
	}
	p.mu.Lock()
	in.proc = cmd.Process
	p.mu.Unlock()
	if p.afterExec != nil {
		p.afterExec(in.name, cmd.Process.Pid)
	}
	return cmd, nil
}

// forget removes an instance that is gone and schedules its replacement,
// backing off when instances keep dying before they are ready.
func (p *Pool) forget(in *instance, expected bool) {
	p.mu.Lock()
	if _, ok := p.insts[in]; ok {
		delete(p.insts, in)
		if !expected && in.readyIn == 0 {
			p.failures++
			backoff := min(100*time.Millisecond<<min(p.failures, 7), 10*time.Second)
			p.notBefore = time.Now().Add(backoff)
		}
		p.broadcast()
	}
	p.mu.Unlock()
	p.wake()
}

// awaitReady probes the instance until it answers ready. It returns
// errStopRequested as soon as the instance is asked to stop.
func (p *Pool) awaitReady(ctx context.Context, in *instance, exited <-chan struct{}) error {
	u := *in.url // written by this goroutine, the owner
	u.Path = p.spec.ReadinessPath
	probeCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // a stop request aborts a probe in flight
		select {
		case <-in.stop:
			cancel()
		case <-probeCtx.Done():
		}
	}()
	deadline := time.NewTimer(p.spec.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(probeCtx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		if resp, err := p.probe.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-in.stop:
			return errStopRequested
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errors.New("process exited")
		case <-deadline.C:
			return fmt.Errorf("not ready after %s", p.spec.ReadyTimeout)
		case <-tick.C:
		}
	}
}

// terminate stops an instance that was asked to stop: it waits for its
// requests in flight to finish, then sends SIGTERM (the function drains
// too), and SIGKILL after DrainTimeout. It returns once the process exited
// or was sent SIGKILL.
func (p *Pool) terminate(in *instance, proc *os.Process, exited <-chan struct{}) {
	deadline := time.Now().Add(p.spec.DrainTimeout)
	timer := time.NewTimer(p.spec.DrainTimeout)
	defer timer.Stop()
	p.mu.Lock()
	why := in.stopWhy
	p.mu.Unlock()
drain:
	for {
		p.mu.Lock()
		n, ch := in.inflight, p.changed
		p.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ch:
		case <-exited:
			break drain
		case <-timer.C:
			break drain
		}
	}
	p.log.Info("stopping instance", "instance", in.name, "reason", why)
	_ = proc.Signal(syscall.SIGTERM)
	timer.Reset(time.Until(deadline) + time.Second)
	select {
	case <-exited:
	case <-timer.C:
		p.log.Warn("instance did not stop in time, killing it", "instance", in.name)
		_ = proc.Kill()
	}
}

// stopAll asks every instance to stop; their owners drain and stop them.
func (p *Pool) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.desired = 0
	for in := range p.insts {
		p.requestStopLocked(in, "shutdown")
	}
	p.broadcast()
}

// InstanceStatus describes one instance.
type InstanceStatus struct {
	Name      string        `json:"name"`
	PID       int           `json:"pid"`
	URL       string        `json:"url"`
	State     string        `json:"state"`
	InFlight  int           `json:"inFlight"`
	ColdStart time.Duration `json:"coldStartNanos"`
}

// Status describes the Pool.
type Status struct {
	Service  string `json:"service"`
	Desired  int    `json:"desired"`
	Ready    int    `json:"ready"`
	InFlight int    `json:"inFlight"`
	// Waiting deliveries have an event and wait for an instance.
	Waiting int `json:"waiting"`
	// Backlog is what waits in JetStream for the Service.
	Backlog       int              `json:"backlog"`
	LastColdStart time.Duration    `json:"lastColdStartNanos"`
	MinScale      int              `json:"minScale"`
	MaxScale      int              `json:"maxScale"`
	Instances     []InstanceStatus `json:"instances"`
}

// Status returns a snapshot of the Pool.
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Service: p.spec.Name, Desired: p.desired, Waiting: p.waiting, Backlog: p.backlog,
		Ready: p.readyLocked(), LastColdStart: p.lastColdStart, MinScale: p.scaling.MinScale, MaxScale: p.scaling.MaxScale}
	for in := range p.insts {
		s.InFlight += in.inflight
		is := InstanceStatus{Name: in.name, State: [...]string{"starting", "ready", "draining"}[in.state], InFlight: in.inflight, ColdStart: in.readyIn}
		if in.url != nil {
			is.URL = in.url.String()
		}
		if in.proc != nil {
			is.PID = in.proc.Pid
		}
		s.Instances = append(s.Instances, is)
	}
	return s
}

// ErrNoInstance is returned by KillOne when no instance is ready.
var ErrNoInstance = errors.New("no ready instance")

// KillOne SIGKILLs the ready instance with the most requests in flight, as
// a crash would, and returns its name. The Pool replaces it; its requests
// fail and their events are redelivered.
func (p *Pool) KillOne() (string, error) {
	p.mu.Lock()
	var victim *instance
	for in := range p.insts {
		if in.state == ready && (victim == nil || in.inflight > victim.inflight) {
			victim = in
		}
	}
	if victim == nil {
		p.mu.Unlock()
		return "", fmt.Errorf("service %s: %w", p.spec.Name, ErrNoInstance)
	}
	name, proc := victim.name, victim.proc // a ready instance has its process
	p.mu.Unlock()
	// os.Process is safe to signal while its owner waits for it: once it
	// has been waited for, Kill fails with os.ErrProcessDone.
	if err := proc.Kill(); err != nil {
		return "", fmt.Errorf("kill %s: %w", name, err)
	}
	p.log.Warn("instance killed on request", "instance", name, "pid", proc.Pid)
	return name, nil
}
