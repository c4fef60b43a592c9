package runner_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// koffeeshop runs the koffeeshop command with args and returns its
// stdout, stderr and exit code.
func koffeeshop(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(runnerBinary(t), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Env = append(os.Environ(), "KOFFEESHOP_ADDR=", "KOFFEESHOP_INGRESS_TOKEN=")
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("koffeeshop %v: %v", args, err)
		}
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("koffeeshop %v did not end within 90 s; stdout %q, stderr %q", args, out.String(), errOut.String())
		return "", "", -1
	}
}

// TestCommands runs the koffeeshop command's send, order, events and
// status against a shop run by the same command, all as processes, and
// checks what they print and their exit codes: 0 done, 1 refused, 2 usage.
func TestCommands(t *testing.T) {
	shop := startRunnerBinary(t)
	addr := "--addr=" + shop.url

	// send: from flags in binary mode, and from a file in structured mode.
	out, errOut, code := koffeeshop(t, "send", addr, "--type", "com.example.cli", "--data", `{"n":1}`, "--extension", "color=blue")
	if code != 0 || !strings.Contains(out, "202 Accepted") {
		t.Fatalf("send: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(good, []byte(`{"specversion":"1.0","id":"f-1","source":"/file","type":"com.example.file","data":{"n":2}}`), 0o644)
	_ = os.WriteFile(bad, []byte(`{"specversion":"2.0","id":"f-2","source":"/file","type":"com.example.file"}`), 0o644)
	if out, errOut, code := koffeeshop(t, "send", addr, "--file", good); code != 0 {
		t.Fatalf("send --file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := koffeeshop(t, "send", addr, "--file", bad); code != 1 || !strings.Contains(errOut, `specversion "2.0" is not supported`) {
		t.Fatalf("send of a 2.0 event: exit %d, stderr %q; want 1 with the ingress's message", code, errOut)
	}
	for _, args := range [][]string{{"send", addr}, {"send", addr, "--type", "x", "--file", good}, {"order", addr, "--customer", "ada"}, {"status", addr, "extra"}, {"nosuch"}} {
		if _, _, code := koffeeshop(t, args...); code != 2 {
			t.Errorf("koffeeshop %v: exit %d, want 2 (usage)", args, code)
		}
	}
	if out, _, code := koffeeshop(t, "order", "--help"); code != 0 && !strings.Contains(out, "--customer") {
		t.Errorf("order --help: exit %d", code)
	}

	// order --wait follows an order to its end, each step with its time.
	out, errOut, code = koffeeshop(t, "order", addr, "--customer", "ada", "--beverage", "flat white", "--wait")
	if code != 0 {
		t.Fatalf("order --wait: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	last := -1
	for _, stage := range []string{"placed", "accepted", "preparing", "ready", "notified"} {
		i := strings.Index(out, "  "+stage)
		if i < 0 || i < last {
			t.Fatalf("order --wait printed %q, want each step in order (%s)", out, stage)
		}
		last = i
	}
	out, _, code = koffeeshop(t, "order", addr, "--customer", "bob", "--beverage", "xyz", "--wait")
	if code != 1 || !strings.Contains(out, "rejected: unknown beverage") {
		t.Fatalf("order of an unknown beverage: exit %d, stdout %q; want 1 and take-order's reason", code, out)
	}

	// events: from a minute ago, only the shop's order events.
	out, errOut, code = koffeeshop(t, "events", addr, "--since", "1m", "--type", "com.koffeeshop.order.", "--limit", "2")
	if code != 0 || strings.Count(out, "com.koffeeshop.order.") != 2 || !strings.Contains(out, `"customer":"ada"`) {
		t.Fatalf("events: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if strings.Contains(out, "com.example.cli") {
		t.Errorf("events --type com.koffeeshop.order. printed another type: %q", out)
	}

	// status: tables, and JSON for machines.
	out, _, code = koffeeshop(t, "status", addr)
	for _, want := range []string{"BROKER", "default/default", "default/take-order", "prepare-beverage", "notified 1"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("status: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	out, _, code = koffeeshop(t, "status", addr, "--json")
	var st struct {
		NATS    string `json:"nats"`
		Brokers []struct {
			Events uint64 `json:"events"`
		} `json:"brokers"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.NATS == "" || len(st.Brokers) != 1 || st.Brokers[0].Events == 0 {
		t.Fatalf("status --json: exit %d, %v, %q", code, err, out)
	}

	// Nothing is listening: refused, not a usage error.
	if _, errOut, code := koffeeshop(t, "status", "--addr=http://127.0.0.1:1"); code != 1 || !strings.Contains(errOut, "is the shop running?") {
		t.Errorf("status of no shop: exit %d, stderr %q", code, errOut)
	}
}
