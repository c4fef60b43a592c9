// Package cli is the koffeeshop command's daily tools beside run: send a
// CloudEvent, place an order and follow it, tail a Broker's events, and
// show a running shop's state. Each command has --help and exits 0 when
// it did what was asked, 1 when it was refused or failed (with the
// reason), and 2 on a usage error.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Exit codes.
const (
	OK      = 0
	Refused = 1
	Usage   = 2
)

// command runs with its arguments (after its name).
type command struct {
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

var commands = map[string]command{
	"send":   {"send one CloudEvent to a Broker and print the answer", send},
	"order":  {"place an order, and with --wait follow it to its end", order},
	"events": {"tail a Broker's events, decoded, from now or from a point in its stream", events},
	"status": {"the Brokers, Triggers and functions of a running shop", status},
}

// IsCommand reports whether name is one of the commands.
func IsCommand(name string) bool {
	_, ok := commands[name]
	return ok || name == "help"
}

// env is what a command writes to.
type env struct {
	stdout, stderr io.Writer
}

// Main runs the command args[0] with args[1:] and returns its exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "help" {
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				return c.run(ctx, e, []string{"--help"})
			}
		}
		Help(stdout)
		return OK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "koffeeshop: unknown command %q\n\n", args[0])
		Help(stderr)
		return Usage
	}
	return c.run(ctx, e, args[1:])
}

// Help lists the commands.
func Help(w io.Writer) {
	fmt.Fprintln(w, "Usage: koffeeshop [run] [flags]      run the shop (see koffeeshop run --help)")
	fmt.Fprintln(w, "       koffeeshop <command> [flags]")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nEach command has --help. Exit codes: 0 ok, 1 refused or failed, 2 usage.")
}

// flags is a command's flag set with the flags every command shares.
type flags struct {
	*flag.FlagSet
	addr   string
	broker string
	token  string
}

func newFlags(e *env, name, args, about string) *flags {
	f := &flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError)}
	f.SetOutput(e.stderr)
	f.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: koffeeshop %s %s\n\n%s\n\nFlags:\n", name, args, about)
		f.PrintDefaults()
	}
	f.StringVar(&f.addr, "addr", envOr("KOFFEESHOP_ADDR", "http://127.0.0.1:8080"), "the shop's address: its Broker ingress (default $KOFFEESHOP_ADDR or http://127.0.0.1:8080)")
	f.StringVar(&f.broker, "broker", "default/default", "the Broker, namespace/name")
	f.StringVar(&f.token, "token", os.Getenv("KOFFEESHOP_INGRESS_TOKEN"), "the ingress's bearer token (default $KOFFEESHOP_INGRESS_TOKEN)")
	return f
}

// parse parses args; ok is false with the exit code to return.
func (f *flags) parse(e *env, args []string) (code int, ok bool) {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return OK, false
		}
		return Usage, false
	}
	if f.NArg() > 0 {
		fmt.Fprintf(e.stderr, "koffeeshop %s: unexpected arguments %q\n", f.Name(), f.Args())
		return Usage, false
	}
	f.addr = strings.TrimRight(f.addr, "/")
	if !strings.HasPrefix(f.addr, "http://") && !strings.HasPrefix(f.addr, "https://") {
		f.addr = "http://" + f.addr
	}
	if ns, name, ok := strings.Cut(f.broker, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		fmt.Fprintf(e.stderr, "koffeeshop %s: --broker %q: want namespace/name\n", f.Name(), f.broker)
		return Usage, false
	}
	return OK, true
}

// brokerURL is the Broker's ingress address.
func (f *flags) brokerURL() string { return f.addr + "/" + f.broker }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// usage reports a usage error.
func usage(e *env, f *flags, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "koffeeshop %s: %s\n", f.Name(), fmt.Sprintf(format, args...))
	return Usage
}

// fail reports a failure or a refusal.
func fail(e *env, name, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "koffeeshop %s: %s\n", name, fmt.Sprintf(format, args...))
	return Refused
}
