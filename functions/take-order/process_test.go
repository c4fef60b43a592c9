package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/gobuild"
)

// lockedBuffer collects the output of a child process.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestProcess runs the built take-order binary on an inherited listener, as
// the local runner does, and stops it with SIGTERM.
func TestProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	bin := filepath.Join(t.TempDir(), "take-order")
	build := gobuild.Command(ctx, bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	lnFile, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	var stderr lockedBuffer
	cmd := exec.CommandContext(ctx, bin)
	cmd.ExtraFiles = []*os.File{lnFile}
	cmd.Env = append(os.Environ(),
		"FUNC_LISTEN_FD=3",
		"PORT=1", // must be ignored in favour of the inherited socket
		"FUNC_DRAIN_TIMEOUT=5s",
		"KOFFEESHOP_INSTANCE=take-order-test",
	)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	lnFile.Close()
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("take-order stderr:\n%s", stderr.String())
		}
	}()

	client := &http.Client{Timeout: 5 * time.Second}
	base := "http://" + addr
	waitReady(t, base, exited)

	body := `{"customer":"ada","beverage":"latte"}`
	req := testkit.BinaryRequest(t, base+"/", testkit.Event("proc-1", "/test/web", coffee.TypeOrderPlaced, body)).WithContext(ctx)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST order: %v", err)
	}
	reply, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, body %q", resp.StatusCode, reply)
	}
	if got := resp.Header.Get("Ce-Type"); got != coffee.TypeOrderAccepted {
		t.Errorf("Ce-Type = %q, want %q", got, coffee.TypeOrderAccepted)
	}
	if got, want := resp.Header.Get("Ce-Id"), coffee.ReplyID("/test/web", "proc-1", coffee.TypeOrderAccepted); got != want {
		t.Errorf("Ce-Id = %q, want %q", got, want)
	}
	var accepted coffee.Accepted
	if err := json.Unmarshal(reply, &accepted); err != nil {
		t.Fatalf("reply %q: %v", reply, err)
	}
	if accepted.Customer != "ada" || accepted.Beverage != "latte" || accepted.OrderID == "" {
		t.Errorf("accepted = %+v", accepted)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("take-order exited with %v, want exit code 0", waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("take-order did not exit after SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}

	logs := stderr.String()
	for _, want := range []string{"function=take-order", "instance=take-order-test", `msg="order accepted"`, "orderId=" + accepted.OrderID, `msg="shutting down"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs)
		}
	}
}

// waitReady polls the readiness endpoint until it answers 200.
func waitReady(t *testing.T, base string, exited <-chan struct{}) {
	t.Helper()
	testkit.Eventually(t, 15*time.Second, "take-order ready", func() error {
		select {
		case <-exited:
			t.Fatal("take-order exited before becoming ready")
		default:
		}
		return testkit.GetOK(base + "/health/readiness")
	})
}
