package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/koffeeshop/koffeeshop/local/gobuild"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
	"github.com/koffeeshop/koffeeshop/local/runner"
)

// idleMemory measures the idle memory: the resident set of the runner
// binary started from config/ with every function at zero, against a
// standalone nats-server with JetStream (the version koffeeshop embeds),
// both read from /proc once idle, as BenchmarkIdleMemory reads it.
func (b *bench) idleMemory(ctx context.Context) ([]Metric, error) {
	bin, err := b.functions(ctx)
	if err != nil {
		return nil, err
	}
	runnerBin := filepath.Join(b.tmp, "koffeeshop")
	build := gobuild.Command(ctx, runnerBin, "github.com/koffeeshop/koffeeshop/local")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build the runner: %w", err)
	}
	natsDir := filepath.Join(b.tmp, "nats-bin")
	if err := runner.BuildImages(ctx, []string{"github.com/nats-io/nats-server/v2"}, natsDir); err != nil {
		return nil, err
	}
	var ours, base []float64
	for range b.opts.Rounds {
		data, err := os.MkdirTemp(b.tmp, "idle-")
		if err != nil {
			return nil, err
		}
		kb, err := idleRSS(ctx, runnerBin, "-config", b.opts.configDir, "-bin-dir", bin, "-addr", "127.0.0.1:0", "-data-dir", data)
		if err != nil {
			return nil, fmt.Errorf("runner: %w", err)
		}
		ours = append(ours, float64(kb)/1024)
		kb, err = idleRSS(ctx, filepath.Join(natsDir, "nats-server"), "-js", "-sd", filepath.Join(data, "nats"), "-a", "127.0.0.1", "-p", "-1")
		if err != nil {
			return nil, fmt.Errorf("nats-server: %w", err)
		}
		base = append(base, float64(kb)/1024)
	}
	return []Metric{
		newMetric("idle runner RSS (functions at 0)", mebibytes, ours).against("nats-server -js alone", base),
	}, nil
}

// idleSettle is how long a process gets to start and go idle.
const idleSettle = 3 * time.Second

// idleRSS starts a program, lets it settle, reads its resident set in KiB
// and interrupts it.
func idleRSS(ctx context.Context, bin string, args ...string) (int, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return 0, fmt.Errorf("exited before it was idle: %v", err)
	case <-time.After(idleSettle):
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		return 0, ctx.Err()
	}
	kb, err := loadgen.ResidentKiB(cmd.Process.Pid)
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		err = errors.Join(err, errors.New("did not stop within 30s of an interrupt"))
	}
	return kb, err
}
