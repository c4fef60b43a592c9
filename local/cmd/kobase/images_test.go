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
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/koffeeshop/koffeeshop/local/manifest"
)

// functions are the function Services of config/, one image each.
var functions = []string{"take-order", "prepare-beverage", "notify"}

// TestImages runs `make images` and `make deploy-dry-run` as a developer
// would, offline, and checks what the cluster would run: the resolved
// manifests still validate, and every image in them (each function
// Service's, each Deployment's of the Broker class) is one that `make
// images` built, on the koffeeshop base, running as 65532 with the
// entrypoint /ko-app/<name> and a static binary of that name in its
// layers. A function's binary, started as Knative starts a container (the
// Service's env, PORT), passes the Service's readiness probe and exits
// cleanly on SIGTERM; a class binary answers -h (see checkClassImage).
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the images with ko")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	// The Deployments as config/ names their images (ko://<package>),
	// before ko resolves them.
	unresolved, err := manifest.LoadDir(context.Background(), filepath.Join(root, "config"))
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
	set, err := manifest.Parse(context.Background(), bytes.NewReader(resolved), "make deploy-dry-run")
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
	if want := len(functions) + len(unresolved.Cluster.Deployments); len(im.Manifests) != want {
		t.Errorf("make images built %d images, want %d: every image config/ names", len(im.Manifests), want)
	}
	base, err := baseFor(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
	if err != nil {
		t.Fatal(err)
	}

	for _, fn := range functions {
		svc := set.Service(manifest.DefaultNamespace, fn)
		if svc == nil {
			t.Errorf("no Service %s in the resolved manifests", fn)
			continue
		}
		t.Run(fn, func(t *testing.T) {
			checkFunctionImage(t, built, base, svc)
		})
	}
	if len(unresolved.Cluster.Deployments) == 0 {
		t.Error("config/ has no Deployments")
	}
	for _, u := range unresolved.Cluster.Deployments {
		i := slices.IndexFunc(set.Cluster.Deployments, func(d *appsv1.Deployment) bool { return d.Namespace == u.Namespace && d.Name == u.Name })
		if i < 0 {
			t.Errorf("no Deployment %s/%s in the resolved manifests", u.Namespace, u.Name)
			continue
		}
		d := set.Cluster.Deployments[i]
		for j, c := range d.Spec.Template.Spec.Containers {
			pkg, ok := strings.CutPrefix(u.Spec.Template.Spec.Containers[j].Image, "ko://")
			if !ok {
				t.Errorf("Deployment %s container %s: image %q is not a ko:// image", d.Name, c.Name, u.Spec.Template.Spec.Containers[j].Image)
				continue
			}
			t.Run(path.Base(pkg), func(t *testing.T) {
				checkClassImage(t, built, base, path.Base(pkg), c)
			})
		}
	}
}

// checkClassImage checks the image of a process of the Broker class (the
// controller, the ingress, the dispatcher), as deploy-dry-run resolved it:
// the image's metadata and its static binary, as for a function, and that
// the binary answers -h with its usage and exits by itself.
//
// Its readiness probe is not exercised here: each of these processes needs
// the Kubernetes API before it is ready (the controller starts its probe
// server only once its informers have synced; the ingress and the
// dispatcher report ready once their informers on Brokers, and Triggers,
// have), and there is no API server in this test. Running them against one
// is the cluster test's job.
func checkClassImage(t *testing.T, built v1.ImageIndex, base v1.Hash, name string, c corev1.Container) {
	img := builtImage(t, built, base, c.Image, "/ko-app/"+name)
	bin := filepath.Join(t.TempDir(), name)
	if err := extract(img, "ko-app/"+name, bin); err != nil {
		t.Fatal(err)
	}
	if err := checkStaticELF(bin, runtime.GOARCH); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" {
		checkHelp(t, bin)
	}
}

// checkHelp runs `bin -h` with an empty environment, as a pod without
// configuration would, and requires the usage of the NATS flags every
// process of the class shares (broker/natsconn) and an exit by itself,
// within 10 seconds: status 0, or 2, which the flag package's
// ContinueOnError convention gives -h (broker/cmd/controller exits 2 on
// any flag error, -h included); never a signal, a panic, or a hang
// waiting on a cluster.
func checkHelp(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-h")
	cmd.Env = []string{}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s -h still ran after 10s\n%s", filepath.Base(bin), out)
	}
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if !exit.Exited() {
			t.Fatalf("%s -h: %v\n%s", filepath.Base(bin), err, out)
		}
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != 0 && code != 2 {
		t.Errorf("%s -h exited %d, want 0 or 2\n%s", filepath.Base(bin), code, out)
	}
	if bytes.Contains(out, []byte("panic:")) || bytes.Contains(out, []byte("goroutine ")) {
		t.Errorf("%s -h panicked\n%s", filepath.Base(bin), out)
	}
	if !bytes.Contains(out, []byte("-nats-url")) {
		t.Errorf("%s -h does not print the usage of -nats-url\n%s", filepath.Base(bin), out)
	}
	t.Logf("%s -h: exit %d, %d bytes of usage", filepath.Base(bin), code, len(out))
}

// checkFunctionImage checks the image of svc, as deploy-dry-run resolved it,
// in the layout that make images wrote.
func checkFunctionImage(t *testing.T, built v1.ImageIndex, base v1.Hash, svc *servingv1.Service) {
	c := svc.Spec.Template.Spec.Containers[0]
	app := "/ko-app/" + svc.Name
	img := builtImage(t, built, base, c.Image, app)
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

// builtImage finds the resolved image ref among those make images built,
// and checks its entrypoint (app), user, platform and base.
func builtImage(t *testing.T, built v1.ImageIndex, base v1.Hash, ref, app string) v1.Image {
	t.Helper()
	d, err := name.NewDigest(ref)
	if err != nil {
		t.Fatalf("image %q is not resolved to a digest: %v", ref, err)
	}
	h, err := v1.NewHash(d.DigestStr())
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
	t.Logf("%s: %s entrypoint %v user %s %s/%s", path.Base(app), h, cf.Config.Entrypoint, cf.Config.User, cf.OS, cf.Architecture)
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
	return img
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
