package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestIndexIsReproducible(t *testing.T) {
	a, err := Index()
	if err != nil {
		t.Fatal(err)
	}
	b, err := Index()
	if err != nil {
		t.Fatal(err)
	}
	da, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Fatalf("two builds differ: %s and %s", da, db)
	}
}

func TestIndexImages(t *testing.T) {
	idx, err := Index()
	if err != nil {
		t.Fatal(err)
	}
	if mt, err := idx.MediaType(); err != nil || mt != types.OCIImageIndex {
		t.Fatalf("media type %s (%v), want %s", mt, err, types.OCIImageIndex)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(platforms) {
		t.Fatalf("%d manifests, want one for each of %v", len(im.Manifests), platforms)
	}
	for i, d := range im.Manifests {
		if d.Platform == nil || !d.Platform.Equals(platforms[i]) {
			t.Fatalf("manifest %d platform %v, want %v", i, d.Platform, platforms[i])
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != d.Platform.OS || cf.Architecture != d.Platform.Architecture {
			t.Errorf("%v: config says %s/%s", d.Platform, cf.OS, cf.Architecture)
		}
		// Kubernetes can only enforce runAsNonRoot on a numeric user.
		if cf.Config.User != "65532:65532" {
			t.Errorf("%v: user %q, want 65532:65532", d.Platform, cf.Config.User)
		}
		files, err := layerFiles(img)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(files["etc/passwd"].body, "nonroot:x:65532:65532:") {
			t.Errorf("%v: /etc/passwd has no nonroot 65532: %q", d.Platform, files["etc/passwd"].body)
		}
		if h := files["tmp/"].hdr; h == nil || h.Mode != 0o1777 {
			t.Errorf("%v: /tmp is %+v, want a 1777 directory", d.Platform, h)
		}
		if h := files["home/nonroot/"].hdr; h == nil || h.Uid != 65532 {
			t.Errorf("%v: /home/nonroot is %+v, want one owned by 65532", d.Platform, h)
		}
		for n, f := range files {
			if !f.hdr.ModTime.Equal(epoch) {
				t.Errorf("%v: %s has time %v, want the epoch", d.Platform, n, f.hdr.ModTime)
			}
		}
	}
}

type file struct {
	hdr  *tar.Header
	body string
}

func layerFiles(img v1.Image) (map[string]file, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	files := map[string]file{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				rc.Close()
				return nil, err
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				rc.Close()
				return nil, err
			}
			files[h.Name] = file{hdr: h, body: string(b)}
		}
		rc.Close()
	}
	return files, nil
}

// TestWriteCache checks the base the way ko looks it up in $KOCACHE/img: the
// index by the digest that run prints, then each platform image by its
// digest, each among the manifests at the top of index.json, with every blob
// there.
func TestWriteCache(t *testing.T) {
	kocache := t.TempDir()
	var out bytes.Buffer
	for range 2 {
		out.Reset()
		if err := run(&out, kocache, defaultRepo); err != nil {
			t.Fatal(err)
		}
	}
	ref, err := name.NewDigest(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("run printed %q: %v", out.String(), err)
	}
	if ref.Context().Name() != defaultRepo {
		t.Fatalf("printed repository %s, want %s", ref.Context().Name(), defaultRepo)
	}

	p, err := layout.FromPath(kocache + "/img")
	if err != nil {
		t.Fatal(err)
	}
	cached, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	cm, err := cached.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + len(platforms); len(cm.Manifests) != want {
		t.Fatalf("index.json lists %d manifests after two runs, want %d", len(cm.Manifests), want)
	}

	h, err := v1.NewHash(ref.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	found, err := partial.FindManifests(cached, match.Digests(h))
	if err != nil || len(found) != 1 {
		t.Fatalf("index %s listed %d times (%v)", h, len(found), err)
	}
	idx, err := cached.ImageIndex(h)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		found, err := partial.FindManifests(cached, match.Digests(d.Digest))
		if err != nil || len(found) != 1 {
			t.Fatalf("image %s (%v) listed %d times (%v)", d.Digest, d.Platform, len(found), err)
		}
		img, err := cached.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range layers {
			ld, err := l.Digest()
			if err != nil {
				t.Fatal(err)
			}
			rc, err := p.Blob(ld)
			if err != nil {
				t.Fatalf("layer %s of %v is not in the cache: %v", ld, d.Platform, err)
			}
			rc.Close()
		}
	}
}

func TestRunNeedsCache(t *testing.T) {
	if err := run(io.Discard, "", defaultRepo); err == nil {
		t.Fatal("run without a cache directory succeeded")
	}
}
