package kubeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// KnativeCRDs lists the CustomResourceDefinition files of Knative Eventing
// (config/core/resources) and Serving (config/core/300-resources) in the
// sources of the knative.dev modules this module requires, as the Go
// module cache holds them: nothing is downloaded.
func KnativeCRDs() ([]string, error) {
	out, err := exec.Command("go", "list", "-m", "-json", "knative.dev/eventing", "knative.dev/serving").Output()
	if err != nil {
		return nil, fmt.Errorf("kubeapi: find the knative.dev modules: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	var files []string
	for dec.More() {
		var m struct{ Path, Dir string }
		if err := dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("kubeapi: go list: %w", err)
		}
		if m.Dir == "" {
			return nil, fmt.Errorf("kubeapi: %s is not in the module cache (go mod download)", m.Path)
		}
		dir := map[string]string{"knative.dev/eventing": "config/core/resources", "knative.dev/serving": "config/core/300-resources"}[m.Path]
		found, err := filepath.Glob(filepath.Join(m.Dir, dir, "*.yaml"))
		if err != nil || len(found) == 0 {
			return nil, fmt.Errorf("kubeapi: no CRDs under %s/%s", m.Dir, dir)
		}
		files = append(files, found...)
	}
	return files, nil
}

// InstallCRDs creates the CustomResourceDefinitions in files and waits
// until each is established.
func (s *Server) InstallCRDs(ctx context.Context, files ...string) error {
	client, err := apiextensions.NewForConfig(s.Config)
	if err != nil {
		return fmt.Errorf("kubeapi: %w", err)
	}
	var names []string
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("kubeapi: %w", err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := dec.Decode(&crd); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("kubeapi: %s: %w", f, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				continue
			}
			if _, err := client.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("kubeapi: create %s from %s: %w", crd.Name, filepath.Base(f), err)
			}
			names = append(names, crd.Name)
		}
	}
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			crd, err := client.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("kubeapi: CRD %s not established: %w", name, err)
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("kubeapi: no CustomResourceDefinition in %s", strings.Join(files, ", "))
	}
	return nil
}
