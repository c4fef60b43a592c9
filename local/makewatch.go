package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The signals whose arrival at make the runner watches for.
const (
	sigint  = 2
	sigterm = 15
)

// stopWithMake ends ctx when the make that runs this process (make run) is
// told to stop. GNU make passes SIGTERM on to its recipe but not SIGINT: a
// Ctrl-C at a terminal reaches the whole process group, so make leaves it
// to the terminal and waits for its recipe with SIGINT blocked. A SIGINT
// sent to make alone would then never stop the shop. While make waits like
// that, its /proc status shows the signal blocked; so does it when make
// handles SIGTERM, and a make that is gone leaves this process to init.
// Outside make (MAKELEVEL unset, or another parent), it does nothing.
func stopWithMake(ctx context.Context, stop context.CancelFunc) {
	ppid := os.Getppid()
	if os.Getenv("MAKELEVEL") == "" || procComm(ppid) != "make" {
		return
	}
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if os.Getppid() != ppid || blocked(ppid, sigint) || blocked(ppid, sigterm) {
				stop()
				return
			}
		}
	}()
}

func procComm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// blocked reports whether process pid blocks signal sig.
func blocked(pid, sig int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigBlk:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(sig-1)) != 0
		}
	}
	return false
}
