package runner

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/koffeeshop/koffeeshop/local/gobuild"
	"github.com/koffeeshop/koffeeshop/local/manifest"
)

// Build compiles the ko:// images of the Services in the config dirs into
// binDir with `go build`, as ko would compile them into images.
func Build(ctx context.Context, configDirs []string, binDir string) error {
	set, err := loadConfig(ctx, configDirs)
	if err != nil {
		return err
	}
	return BuildImages(ctx, Images(set), binDir)
}

// Images lists the import paths of the ko:// images in set.
func Images(set *manifest.Set) []string {
	var pkgs []string
	for _, svc := range set.Services {
		for _, c := range svc.Spec.Template.Spec.Containers {
			if p, ok := strings.CutPrefix(c.Image, "ko://"); ok {
				pkgs = append(pkgs, p)
			}
		}
	}
	return pkgs
}

// BuildImages builds pkgs into binDir in one `go build`, with ko's flags.
func BuildImages(ctx context.Context, pkgs []string, binDir string) error {
	if len(pkgs) == 0 {
		return nil
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("bin dir: %w", err)
	}
	cmd := gobuild.Command(ctx, binDir+string(os.PathSeparator), pkgs...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", strings.Join(pkgs, " "), err)
	}
	return nil
}
