// Package gobuild builds Go programs with the flags ko builds the images'
// programs with: -trimpath and CGO_ENABLED=0. The local runner runs those
// same programs as processes, and the tests build them too; with ko's flags
// one compile of their dependencies serves the runner, the tests and make
// images, where other flags would compile every dependency once per set.
package gobuild

import (
	"context"
	"os"
	"os/exec"
)

// Command is `go build -trimpath -o out pkgs...` with CGO_ENABLED=0; out
// ending in a path separator is a directory for several programs.
func Command(ctx context.Context, out string, pkgs ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath", "-o", out}, pkgs...)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd
}
