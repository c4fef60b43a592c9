package testkit

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// maxPollInterval bounds the pause between two looks at a condition: it
// starts at a millisecond, so that a condition met at once is seen at
// once, and doubles up to this, so that one that takes long does not keep
// a busy loop on the machine.
const maxPollInterval = 50 * time.Millisecond

// Eventually checks cond until it returns nil and fails the test, naming
// what it waited for and cond's last error, when timeout has passed
// without.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	if err := Poll(timeout, cond); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

// WaitFor is Eventually for a condition that has nothing to say but yes
// or no.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	Eventually(tb, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = errors.New("not yet")

// Poll checks cond until it returns nil, and returns cond's last error
// once timeout has passed without: for a wait whose end is not yet a
// failure (the test reports what it finds), or one off the test's
// goroutine.
func Poll(timeout time.Duration, cond func() error) error {
	return poll(timeout, nil, cond)
}

// poll checks cond until it returns nil, again at once whenever wake
// (which may be nil) has something, and returns cond's last error once
// timeout has passed.
func poll(timeout time.Duration, wake <-chan struct{}, cond func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		next := time.NewTimer(pause)
		select {
		case <-wake:
		case <-next.C:
		case <-deadline.C:
			next.Stop()
			return fmt.Errorf("still not after %s: %w", timeout, err)
		}
		next.Stop()
		pause = min(2*pause, maxPollInterval)
	}
}
