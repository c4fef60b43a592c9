package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	corev1 "k8s.io/api/core/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/koffeeshop/koffeeshop/config"
)

// functions are the function Services of config/, one image each.
var functions = []string{"take-order", "prepare-beverage", "notify"}

// TestFunctionImages runs `make images` and `make deploy-dry-run` as a
// developer would, offline, and checks what Knative would run: the resolved
// manifests still validate, each Service's image is one that `make images`
// built, on the koffeeshop base, with the entrypoint /ko-app/<function>, a
// static binary of that name in its layers, and that binary, started as
// Knative starts a container (the Service's env, PORT), passes the Service's
// readiness probe and exits cleanly on SIGTERM.
func TestFunctionImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the function images with ko")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runMake(t, root, "ko"); err != nil {
		t.Skipf("ko cannot be installed with go install (is the Go module proxy reachable?): %v\n%s", err, out)
	}
	// ko names the layout like an image repository: lower case only, which
	// t.TempDir is not.
	tmp, err := os.MkdirTemp("", "koffeeshop-images-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	images := filepath.Join(tmp, "images")
	vars := []string{"KOCACHE=" + filepath.Join(tmp, "kocache"), "IMAGES=" + images}
	if out, err := runMake(t, root, "images", vars...); err != nil {
		t.Fatalf("make images: %v\n%s", err, out)
	}
	resolved, err := runMake(t, root, "deploy-dry-run", vars...)
	if err != nil {
		t.Fatalf("make deploy-dry-run: %v\n%s", err, resolved)
	}
	set, err := config.Parse(context.Background(), bytes.NewReader(resolved), "make deploy-dry-run")
	if err != nil {
		t.Fatalf("resolved manifests do not validate: %v", err)
	}

	p, err := layout.FromPath(images)
	if err != nil {
		t.Fatal(err)
	}
	built, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := built.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(functions) {
		t.Errorf("make images built %d images, want %d", len(im.Manifests), len(functions))
	}
	base, err := baseFor(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
	if err != nil {
		t.Fatal(err)
	}

	for _, fn := range functions {
		svc := set.Service(config.DefaultNamespace, fn)
		if svc == nil {
			t.Errorf("no Service %s in the resolved manifests", fn)
			continue
		}
		t.Run(fn, func(t *testing.T) {
			checkFunctionImage(t, built, base, svc)
		})
	}
}

// checkFunctionImage checks the image of svc, as deploy-dry-run resolved it,
// in the layout that make images wrote.
func checkFunctionImage(t *testing.T, built v1.ImageIndex, base v1.Hash, svc *servingv1.Service) {
	c := svc.Spec.Template.Spec.Containers[0]
	ref, err := name.NewDigest(c.Image)
	if err != nil {
		t.Fatalf("image %q is not resolved to a digest: %v", c.Image, err)
	}
	h, err := v1.NewHash(ref.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	img, err := built.Image(h)
	if err != nil {
		t.Fatalf("image %s is not one that make images built: %v", h, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	app := "/ko-app/" + svc.Name
	t.Logf("%s: %s entrypoint %v user %s %s/%s", svc.Name, h, cf.Config.Entrypoint, cf.Config.User, cf.OS, cf.Architecture)
	if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != app {
		t.Errorf("entrypoint %q, want [%s]", cf.Config.Entrypoint, app)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 from the base", cf.Config.User)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Annotations["org.opencontainers.image.base.digest"]; got != base.String() {
		t.Errorf("base digest %q, want the koffeeshop base %s", got, base)
	}

	bin := filepath.Join(t.TempDir(), svc.Name)
	if err := extract(img, strings.TrimPrefix(app, "/"), bin); err != nil {
		t.Fatal(err)
	}
	if err := checkStaticELF(bin, runtime.GOARCH); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" {
		startLikeKnative(t, bin, c)
	}
}

// baseFor is the digest of the base image for platform.
func baseFor(platform v1.Platform) (v1.Hash, error) {
	idx, err := Index()
	if err != nil {
		return v1.Hash{}, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.Equals(platform) {
			return d.Digest, nil
		}
	}
	return v1.Hash{}, fmt.Errorf("no base image for %v", platform)
}

// extract writes the file path of img's filesystem to dst, and requires it
// to be an executable regular file.
func extract(img v1.Image, path, dst string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s is not in the image", path)
		}
		if err != nil {
			return err
		}
		if strings.TrimPrefix(h.Name, "/") != path {
			continue
		}
		if h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file: type %c mode %o", path, h.Typeflag, h.Mode)
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
}

// checkStaticELF: the base has no libc and no loader, so the binary must be
// a static executable for goarch.
func checkStaticELF(path, goarch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	if want, ok := machines[goarch]; !ok || f.Machine != want {
		return fmt.Errorf("%s is built for %v, want %s", path, f.Machine, goarch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the base image has no loader", path)
		}
	}
	return nil
}

// startLikeKnative runs the binary as Knative Serving runs the container:
// the container's env plus PORT, probed on the readiness path of the
// Service, then stopped with SIGTERM.
func startLikeKnative(t *testing.T, bin string, c corev1.Container) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{"PORT=" + strconv.Itoa(port), "K_SERVICE=" + filepath.Base(bin)}
	for _, e := range c.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	probe := "/"
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil {
		probe = c.ReadinessProbe.HTTPGet.Path
	}
	url := fmt.Sprintf("http://127.0.0.1:%d%s", port, probe)
	if err := waitReady(ctx, url, exited); err != nil {
		t.Fatalf("readiness probe %s: %v\n%s", probe, err, logs.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-ctx.Done():
		t.Fatalf("still running 30s after SIGTERM\n%s", logs.String())
	}
}

func waitReady(ctx context.Context, url string, exited <-chan error) error {
	client := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before it was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// runMake runs a target of the repository's Makefile and returns its
// standard output, or, when it fails, both outputs.
func runMake(t *testing.T, root, target string, vars ...string) ([]byte, error) {
	t.Helper()
	args := append([]string{"-s", "--no-print-directory", "-C", root, target}, vars...)
	cmd := exec.Command("make", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return append(stdout.Bytes(), stderr.Bytes()...), err
	}
	return stdout.Bytes(), nil
}
