// Command kobase makes the base image that ko builds the koffeeshop functions
// on, and stores it in ko's on-disk image cache ($KOCACHE/img, an OCI image
// layout) so that ko finds it there by digest and never contacts a registry.
// It prints the reference to give ko as its base:
//
//	KO_DEFAULTBASEIMAGE=$(go run ./local/cmd/kobase -kocache "$KOCACHE") ko build ...
//
// The image is an OCI index with one image per platform. Each has a single
// small layer: /etc/passwd and /etc/group with root and nonroot (65532),
// /home/nonroot and /tmp. It runs as 65532:65532, which satisfies the
// runAsNonRoot of the Services in config/. The functions are static Go
// binaries (ko builds with CGO_ENABLED=0) that need nothing else: no shell, no
// libc, no CA certificates (they speak plain HTTP inside the cluster).
//
// Every byte is fixed (timestamps are the Unix epoch), so the digest is the
// same on every machine and every run.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// defaultRepo names the base in image references and in the
// org.opencontainers.image.base.name annotation of every function image. The
// .invalid domain cannot resolve: the image only ever comes from the cache.
const defaultRepo = "koffeeshop.invalid/base"

// nonroot is the uid and gid the images run as.
const nonroot = 65532

// platforms are the platforms the base exists for; ko builds for the ones
// its --platform selects.
var platforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64"},
}

var epoch = time.Unix(0, 0).UTC()

func main() {
	kocache := flag.String("kocache", os.Getenv("KOCACHE"), "ko's cache directory (the KOCACHE that ko is run with)")
	repo := flag.String("repo", defaultRepo, "repository that names the base image")
	flag.Parse()
	if err := run(os.Stdout, *kocache, *repo); err != nil {
		fmt.Fprintln(os.Stderr, "kobase:", err)
		os.Exit(1)
	}
}

func run(out io.Writer, kocache, repo string) error {
	if kocache == "" {
		return errors.New("no ko cache directory: set -kocache or KOCACHE")
	}
	idx, err := Index()
	if err != nil {
		return err
	}
	if err := WriteCache(kocache, idx); err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return fmt.Errorf("base index digest: %w", err)
	}
	_, err = fmt.Fprintf(out, "%s@%s\n", repo, d)
	return err
}

// Index builds the base image index.
func Index() (v1.ImageIndex, error) {
	layer, err := rootLayer()
	if err != nil {
		return nil, err
	}
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		img, err := platformImage(layer, p)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &p},
		})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...), nil
}

func platformImage(layer v1.Layer, p v1.Platform) (v1.Image, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	base, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Created:      v1.Time{Time: epoch},
		Config: v1.Config{
			User:       fmt.Sprintf("%d:%d", nonroot, nonroot),
			WorkingDir: "/home/nonroot",
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("base config for %s: %w", p, err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "github.com/koffeeshop/koffeeshop/local/cmd/kobase",
			Comment:   "passwd, group, /home/nonroot and /tmp",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("base layer for %s: %w", p, err)
	}
	return img, nil
}

// rootLayer is the one filesystem layer of the base.
func rootLayer() (v1.Layer, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonroot)
	entries := []struct {
		name     string
		mode     int64
		uid      int
		body     string
		typeflag byte
	}{
		{"etc/", 0o755, 0, "", tar.TypeDir},
		{"etc/passwd", 0o644, 0, passwd, tar.TypeReg},
		{"etc/group", 0o644, 0, group, tar.TypeReg},
		{"home/", 0o755, 0, "", tar.TypeDir},
		{"home/nonroot/", 0o700, nonroot, "", tar.TypeDir},
		{"tmp/", 0o1777, 0, "", tar.TypeDir},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Typeflag: e.typeflag,
			Name:     e.name,
			Mode:     e.mode,
			Uid:      e.uid,
			Gid:      e.uid,
			Size:     int64(len(e.body)),
			ModTime:  epoch,
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("base layer %s: %w", e.name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			return nil, fmt.Errorf("base layer %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	return layer, nil
}

// WriteCache adds idx, and each image in it, to ko's image cache under
// kocache. ko looks a digest reference up among the manifests listed at the
// top of $KOCACHE/img/index.json and, for an index, each of its platform
// images the same way, so both are listed there. Entries already present are
// left alone, so running it again changes nothing.
func WriteCache(kocache string, idx v1.ImageIndex) error {
	dir := filepath.Join(kocache, "img")
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("create ko cache layout: %w", err)
		}
	}
	cached, err := p.ImageIndex()
	if err != nil {
		return fmt.Errorf("read ko cache layout: %w", err)
	}
	cm, err := cached.IndexManifest()
	if err != nil {
		return fmt.Errorf("read ko cache layout: %w", err)
	}
	have := map[v1.Hash]bool{}
	for _, d := range cm.Manifests {
		have[d.Digest] = true
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("base index: %w", err)
	}
	for _, d := range im.Manifests {
		if have[d.Digest] {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return fmt.Errorf("base image %s: %w", d.Digest, err)
		}
		if err := p.AppendImage(img, layout.WithPlatform(*d.Platform)); err != nil {
			return fmt.Errorf("write base image %s: %w", d.Platform, err)
		}
	}
	h, err := idx.Digest()
	if err != nil {
		return fmt.Errorf("base index digest: %w", err)
	}
	if !have[h] {
		if err := p.AppendIndex(idx); err != nil {
			return fmt.Errorf("write base index: %w", err)
		}
	}
	return nil
}
