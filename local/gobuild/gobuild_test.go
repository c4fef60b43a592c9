package gobuild_test

import (
	"debug/buildinfo"
	"path/filepath"
	"testing"

	"github.com/koffeeshop/koffeeshop/local/gobuild"
)

// TestCommandBuildsAsKoDoes: the program is built with -trimpath and
// without cgo, the settings ko's images are built with.
func TestCommandBuildsAsKoDoes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	bin := filepath.Join(t.TempDir(), "probe")
	if out, err := gobuild.Command(t.Context(), bin, "github.com/koffeeshop/koffeeshop/local/gobuild/testdata/probe").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range info.Settings {
		got[s.Key] = s.Value
	}
	if got["-trimpath"] != "true" || got["CGO_ENABLED"] != "0" {
		t.Fatalf("built with -trimpath=%q CGO_ENABLED=%q, want true and 0", got["-trimpath"], got["CGO_ENABLED"])
	}
}
