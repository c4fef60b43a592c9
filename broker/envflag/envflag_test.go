package envflag

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFlagSet(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	type vals struct {
		s string
		d time.Duration
		n int64
	}
	define := func(f *FlagSet) *vals {
		var v vals
		f.String(&v.s, "s", "S", "def", "a string")
		f.Duration(&v.d, "d", "D", time.Second, "a duration")
		f.Bytes(&v.n, "n", "N", 10, "a size")
		return &v
	}

	t.Run("defaults, the environment, then flags", func(t *testing.T) {
		f := New("t", env(nil), io.Discard)
		v := define(f)
		if err := f.Parse(nil); err != nil || *v != (vals{"def", time.Second, 10}) {
			t.Errorf("defaults = %+v, %v", *v, err)
		}
		f = New("t", env(map[string]string{"S": "env", "D": "2s", "N": "20"}), io.Discard)
		v = define(f)
		if err := f.Parse([]string{"-d", "3s"}); err != nil || *v != (vals{"env", 3 * time.Second, 20}) {
			t.Errorf("environment and flags = %+v, %v", *v, err)
		}
	})

	t.Run("the first bad variable is the error", func(t *testing.T) {
		f := New("t", env(map[string]string{"D": "soon", "N": "0"}), io.Discard)
		define(f)
		if err := f.Parse(nil); err == nil || !strings.HasPrefix(err.Error(), "$D: ") {
			t.Errorf("error = %v, want one naming $D", err)
		}
		f = New("t", env(map[string]string{"N": "1KiB"}), io.Discard)
		define(f)
		if err := f.Parse(nil); err == nil || err.Error() != `$N: "1KiB" is not a positive number of bytes` {
			t.Errorf("error = %v", err)
		}
	})

	t.Run("usage names the variables; no stray arguments", func(t *testing.T) {
		var out strings.Builder
		f := New("t", env(nil), &out)
		define(f)
		if err := f.Parse([]string{"-h"}); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "a duration ($D)") {
			t.Errorf("-h = %v, usage %q", err, out.String())
		}
		f = New("t", env(nil), io.Discard)
		define(f)
		if err := f.Parse([]string{"-s", "x", "extra"}); err == nil || !strings.Contains(err.Error(), `"extra"`) {
			t.Errorf("stray argument: error = %v", err)
		}
	})
}
