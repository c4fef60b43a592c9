package serve

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// Environment variables read by a function process.
const (
	// EnvListenFD names an inherited file descriptor holding a listening
	// socket, e.g. "3" for the first of exec.Cmd.ExtraFiles.
	EnvListenFD = "FUNC_LISTEN_FD"
	// EnvPort is the TCP port to listen on when EnvListenFD is unset.
	EnvPort = "PORT"
	// EnvDrainTimeout bounds how long in-flight requests may run after
	// SIGTERM/SIGINT (Go duration).
	EnvDrainTimeout = "FUNC_DRAIN_TIMEOUT"
	// EnvInstance names this function instance; defaults to the host name.
	EnvInstance = "KOFFEESHOP_INSTANCE"
)

// DefaultPort is used when neither EnvListenFD nor EnvPort is set.
const DefaultPort = "8080"

// Listen returns the listener of the function process: the inherited socket
// named by FUNC_LISTEN_FD when set, otherwise a TCP listener on :$PORT
// (default 8080).
func Listen(getenv func(string) string) (net.Listener, error) {
	if v := getenv(EnvListenFD); v != "" {
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 3 {
			return nil, fmt.Errorf("%s=%q: want a file descriptor number >= 3", EnvListenFD, v)
		}
		return FileListener(uintptr(fd))
	}
	port := getenv(EnvPort)
	if port == "" {
		port = DefaultPort
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return nil, fmt.Errorf("%s=%q: want a TCP port number", EnvPort, port)
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return nil, fmt.Errorf("listen on port %s: %w", port, err)
	}
	return ln, nil
}

// FileListener builds a listener from an inherited listening socket. The
// descriptor is duplicated by the listener and closed here.
func FileListener(fd uintptr) (net.Listener, error) {
	f := os.NewFile(fd, "listener-fd-"+strconv.FormatUint(uint64(fd), 10))
	if f == nil {
		return nil, fmt.Errorf("file descriptor %d is not valid", fd)
	}
	ln, err := net.FileListener(f)
	closeErr := f.Close()
	if err != nil {
		return nil, fmt.Errorf("listener from file descriptor %d: %w", fd, err)
	}
	if closeErr != nil {
		return nil, errors.Join(fmt.Errorf("close file descriptor %d: %w", fd, closeErr), ln.Close())
	}
	return ln, nil
}

// DurationEnv reads a non-negative Go duration ("1s", "250ms", "0") from the
// environment, returning def when the variable is unset or empty.
func DurationEnv(getenv func(string) string, key string, def time.Duration) (time.Duration, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("%s=%q: must not be negative", key, v)
	}
	return d, nil
}

// InstanceName returns the name of this function instance: KOFFEESHOP_INSTANCE
// when set, otherwise the host name (the pod name on Knative).
func InstanceName(getenv func(string) string) string {
	if v := getenv(EnvInstance); v != "" {
		return v
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown"
}

// NewLogger returns a text logger writing to w with the function and
// instance attributes attached.
func NewLogger(w io.Writer, function, instance string) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil)).With("function", function, "instance", instance)
}
