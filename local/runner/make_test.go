package runner_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// TestMakeRunStopsOnASignalToMake: SIGINT or SIGTERM sent to the make
// process of `make run` alone (not to its process group, as a terminal's
// Ctrl-C would) stops the runner and every function within 2 s.
func TestMakeRunStopsOnASignalToMake(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make on this machine")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			cmd := exec.Command("make", "--no-print-directory", "-C", root, "run", "ADDR="+addr, "DATA="+t.TempDir(), "BIN="+binDir)
			// make in a session of its own: the signal goes to make
			// alone, never to the group.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			logs := &syncBuffer{}
			cmd.Stdout, cmd.Stderr = logs, logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
				}
				if t.Failed() {
					t.Logf("make run output:\n%s", logs.String())
				}
			})
			base := "http://" + addr
			waitReady(t, base, 60*time.Second)
			// An order brings every function up.
			if resp, _ := testkit.PostBinary(t, base+"/default/default", testkit.Event("make-"+sig.String(), "/make-test", "com.koffeeshop.order.placed", `{"customer":"ada","beverage":"latte"}`)); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("order: %d", resp.StatusCode)
			}
			var pids []int
			testkit.Eventually(t, 30*time.Second, "the order notified with three instances up", func() error {
				var st struct {
					Orders    map[string]int
					Functions []struct{ Instances []struct{ PID int } }
				}
				if resp, err := http.Get(base + "/status"); err == nil {
					_ = json.NewDecoder(resp.Body).Decode(&st)
					resp.Body.Close()
				}
				pids = pids[:0]
				for _, f := range st.Functions {
					for _, in := range f.Instances {
						pids = append(pids, in.PID)
					}
				}
				if st.Orders["notified"] != 1 || len(pids) != 3 {
					return fmt.Errorf("%+v", st)
				}
				return nil
			})

			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(2 * time.Second)
			select {
			case <-exited:
			case <-time.After(time.Until(deadline)):
				t.Fatalf("make run did not end within 2 s of %s to make", sig)
			}
			for _, pid := range pids {
				// Signal 0 tests whether the process exists.
				testkit.WaitFor(t, time.Until(deadline), fmt.Sprintf("function process %d gone 2 s after %s to make", pid, sig), func() bool {
					return syscall.Kill(pid, 0) != nil
				})
			}
		})
	}
}
