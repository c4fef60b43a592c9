// Package envflag is a command line whose every flag defaults to an
// environment variable, as the processes of the KoffeeshopJetStream Broker
// class take their settings: a Deployment sets the environment (NATS files
// mounted from a Secret among it) and a developer's flags win over it.
package envflag

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"
)

// FlagSet registers flags on a flag.FlagSet, each defaulting to its
// environment variable when that is set, else to the default given. The
// variable is named in the flag's usage text, so -h lists it.
type FlagSet struct {
	fs     *flag.FlagSet
	getenv func(string) string
	// errs are the environment's values that did not parse. They are
	// reported by Parse rather than at registration, so that a command
	// registers its flags without an error check each.
	errs []error
}

// New returns a FlagSet named name that reads the environment through
// getenv and writes its usage and parse errors to stderr. Its errors are
// returned, never fatal.
func New(name string, getenv func(string) string, stderr io.Writer) *FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return Wrap(fs, getenv)
}

// Wrap registers on fs, for a package that adds its own flags to a
// command's flag.FlagSet.
func Wrap(fs *flag.FlagSet, getenv func(string) string) *FlagSet {
	return &FlagSet{fs: fs, getenv: getenv}
}

// Flags is the flag.FlagSet underneath, for flags that no environment
// variable sets.
func (f *FlagSet) Flags() *flag.FlagSet { return f.fs }

// String defines a string flag, defaulting to $env when it is not empty.
func (f *FlagSet) String(p *string, name, env, def, usage string) {
	if v := f.getenv(env); v != "" {
		def = v
	}
	f.fs.StringVar(p, name, def, usage+" ($"+env+")")
}

// Duration defines a duration flag, defaulting to $env when it is not
// empty. A $env that is no duration is an error of Parse.
func (f *FlagSet) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	if s := f.getenv(env); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("$%s: %w", env, err))
		} else {
			def = d
		}
	}
	f.fs.DurationVar(p, name, def, usage+" ($"+env+")")
}

// Bytes defines a flag for a positive number of bytes, defaulting to $env
// when it is not empty. A $env that is no positive integer is an error of
// Parse.
func (f *FlagSet) Bytes(p *int64, name, env string, def int64, usage string) {
	if s := f.getenv(env); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			f.errs = append(f.errs, fmt.Errorf("$%s: %q is not a positive number of bytes", env, s))
		} else {
			def = n
		}
	}
	f.fs.Int64Var(p, name, def, usage+" ($"+env+")")
}

// Parse reports the first environment variable that did not parse, in the
// order the flags were defined, before it looks at args; then it parses
// args, which must hold flags only: a command that takes no arguments
// refuses a stray one rather than ignore it.
func (f *FlagSet) Parse(args []string) error {
	if len(f.errs) > 0 {
		return f.errs[0]
	}
	if err := f.fs.Parse(args); err != nil {
		return err
	}
	if f.fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", f.fs.Args())
	}
	return nil
}
