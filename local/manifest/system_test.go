package manifest_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"knative.dev/pkg/injection"
	"sigs.k8s.io/yaml"

	"github.com/koffeeshop/koffeeshop/broker"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/local/manifest"
)

// systemNamespace is where the Broker class's processes run.
const systemNamespace = "koffeeshop-system"

// The class's components: each a Deployment, run as the ServiceAccount of
// the same name, from the main package of its ko:// image.
var components = map[string]string{
	"koffeeshop-controller":         "ko://github.com/koffeeshop/koffeeshop/broker/cmd/controller",
	"koffeeshop-broker-ingress":     "ko://github.com/koffeeshop/koffeeshop/broker/cmd/ingress",
	"koffeeshop-trigger-dispatcher": "ko://github.com/koffeeshop/koffeeshop/triggers/cmd/dispatcher",
}

func loadShipped(t *testing.T) *manifest.Set {
	t.Helper()
	set, err := manifest.LoadDir(context.Background(), configDir)
	if err != nil {
		t.Fatalf("config/ does not validate: %v", err)
	}
	return set
}

func deployment(set *manifest.Set, ns, name string) *appsv1.Deployment {
	for _, d := range set.Cluster.Deployments {
		if d.Namespace == ns && d.Name == name {
			return d
		}
	}
	return nil
}

// TestBrokerClassIsShipped: config/ holds the class's Namespace and one
// Deployment per component, with its image, and the runner keeps them
// apart from what it runs.
func TestBrokerClassIsShipped(t *testing.T) {
	set := loadShipped(t)
	if !slices.ContainsFunc(set.Cluster.Namespaces, func(ns *corev1.Namespace) bool { return ns.Name == systemNamespace }) {
		t.Errorf("no Namespace %s", systemNamespace)
	}
	if n := len(set.Cluster.Deployments); n != len(components) {
		t.Errorf("%d Deployments, want %d", n, len(components))
	}
	for name, image := range components {
		d := deployment(set, systemNamespace, name)
		if d == nil {
			t.Errorf("no Deployment %s/%s", systemNamespace, name)
			continue
		}
		if cs := d.Spec.Template.Spec.Containers; len(cs) != 1 || cs[0].Image != image {
			t.Errorf("Deployment %s: want one container with image %s", name, image)
		}
	}
	// The runner runs Services and Triggers only: none of the class's
	// processes is among them.
	for _, svc := range set.Services {
		if strings.HasPrefix(svc.Name, "koffeeshop-") {
			t.Errorf("Knative Service %s: the class's components are Deployments", svc.Name)
		}
	}
}

// TestShippedBrokerIsKoffeeshopJetStream: the shop's Broker is of the class,
// and its spec.config names a ConfigMap in config/ whose keys are the
// class's own (a misspelt key would be ignored, not refused) and hold the
// defaults the comments there say.
func TestShippedBrokerIsKoffeeshopJetStream(t *testing.T) {
	set := loadShipped(t)
	for _, b := range set.Brokers {
		if class := b.Annotations[brokerreconciler.ClassAnnotationKey]; class != brokerreconciler.ClassName {
			t.Errorf("Broker %s/%s: class %q, want %s", b.Namespace, b.Name, class, brokerreconciler.ClassName)
		}
		ref := b.Spec.Config
		if ref == nil || ref.Kind != "ConfigMap" || (ref.APIVersion != "" && ref.APIVersion != "v1") {
			t.Errorf("Broker %s/%s: spec.config %+v is not a v1 ConfigMap", b.Namespace, b.Name, ref)
			continue
		}
		ns := ref.Namespace
		if ns == "" {
			ns = b.Namespace
		}
		cm := findConfigMap(set, ns, ref.Name)
		if cm == nil {
			t.Errorf("Broker %s/%s: ConfigMap %s/%s is not in config/", b.Namespace, b.Name, ns, ref.Name)
			continue
		}
		if err := checkStreamSettings(cm.Data); err != nil {
			t.Errorf("ConfigMap %s/%s: %v", ns, ref.Name, err)
		}
	}
}

// streamKeys are the keys the class reads from a Broker's ConfigMap.
var streamKeys = []string{
	broker.KeyReplicas, broker.KeyStorage,
	broker.KeyMaxAge, broker.KeyDuplicateWindow,
}

func checkStreamSettings(data map[string]string) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if !slices.Contains(streamKeys, k) {
			errs = append(errs, fmt.Errorf("key %q is none of %v: the class would ignore it", k, streamKeys))
		}
	}
	for _, k := range streamKeys {
		if _, ok := data[k]; !ok {
			errs = append(errs, fmt.Errorf("key %q is missing: ship every key, so the defaults are there to read", k))
		}
	}
	got, err := broker.ParseStreamOptions(data)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if want := broker.DefaultStreamOptions(); got != want {
		errs = append(errs, fmt.Errorf("settings %+v, want the defaults %+v", got, want))
	}
	return errors.Join(errs...)
}

func TestCheckStreamSettingsFails(t *testing.T) {
	good := map[string]string{"replicas": "1", "storage": "file", "maxAge": "24h", "duplicateWindow": "2m"}
	with := func(k, v string) map[string]string {
		m := maps.Clone(good)
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	if err := checkStreamSettings(good); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for _, tc := range []struct {
		name string
		data map[string]string
		want string
	}{
		{"misspelt key", with("max-age", "24h"), `key "max-age" is none of`},
		{"missing key", with("storage", ""), `key "storage" is missing`},
		{"bad value", with("replicas", "seven"), "replicas"},
		{"not the default", with("maxAge", "1h"), "want the defaults"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkStreamSettings(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// wantGrants is every permission config/ grants, by ServiceAccount in
// koffeeshop-system: "<scope> <group>/<resource>" to its verbs, where the
// scope is * for a ClusterRoleBinding and the namespace for a RoleBinding,
// and the core group is written "core". It is the whole table: a grant
// more or less fails TestRBACIsLeastPrivilege.
var wantGrants = map[string]map[string][]string{
	"koffeeshop-controller": {
		// The generated Broker and Trigger reconcilers: informers,
		// finalizers by merge patch, status by update.
		"* eventing.knative.dev/brokers":             {"get", "list", "watch", "patch", "update"},
		"* eventing.knative.dev/triggers":            {"get", "list", "watch", "patch", "update"},
		"* eventing.knative.dev/brokers/status":      {"update", "patch"},
		"* eventing.knative.dev/triggers/status":     {"update", "patch"},
		"* eventing.knative.dev/brokers/finalizers":  {"update", "patch"},
		"* eventing.knative.dev/triggers/finalizers": {"update", "patch"},
		// A Broker's spec.config.
		"* core/configmaps": {"get", "list", "watch"},
		// What knative.dev/pkg/resolver lists and watches to resolve a
		// subscriber or a dead-letter sink.
		"* core/services":                {"get", "list", "watch"},
		"* serving.knative.dev/services": {"get", "list", "watch"},
		// client-go's event recorder.
		"* core/events": {"create", "patch"},
		// Leader election, in its own namespace only.
		systemNamespace + " coordination.k8s.io/leases": {"get", "list", "watch", "create", "update"},
	},
	// The data plane writes nothing. broker/clusteringress: an informer
	// on Brokers.
	"koffeeshop-broker-ingress": {
		"* eventing.knative.dev/brokers": {"get", "list", "watch"},
	},
	// triggers/fleet: informers on Triggers and Brokers.
	"koffeeshop-trigger-dispatcher": {
		"* eventing.knative.dev/brokers":  {"get", "list", "watch"},
		"* eventing.knative.dev/triggers": {"get", "list", "watch"},
	},
}

// TestRBACIsLeastPrivilege follows every binding in config/ to its role and
// compares what each ServiceAccount may do with wantGrants.
func TestRBACIsLeastPrivilege(t *testing.T) {
	set := loadShipped(t)
	got, err := grants(set)
	if err != nil {
		t.Fatal(err)
	}
	for _, sa := range slices.Sorted(maps.Keys(got)) {
		if _, ok := wantGrants[strings.TrimPrefix(sa, systemNamespace+"/")]; !ok || !strings.HasPrefix(sa, systemNamespace+"/") {
			t.Errorf("ServiceAccount %s is granted %v; it should be granted nothing", sa, got[sa])
		}
	}
	for name, want := range wantGrants {
		sa := systemNamespace + "/" + name
		have := got[sa]
		for _, k := range slices.Sorted(maps.Keys(want)) {
			w := slices.Sorted(slices.Values(want[k]))
			if h := have[k]; !slices.Equal(h, w) {
				t.Errorf("%s on %s: granted %v, want %v", sa, k, h, w)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(have)) {
			if _, ok := want[k]; !ok {
				t.Errorf("%s on %s: granted %v, want nothing", sa, k, have[k])
			}
		}
	}
	// Every role is bound: an unbound one is dead weight, or a binding
	// that went missing.
	bound := map[string]bool{}
	for _, b := range set.Cluster.ClusterRoleBindings {
		bound["ClusterRole "+b.RoleRef.Name] = true
	}
	for _, b := range set.Cluster.RoleBindings {
		if b.RoleRef.Kind == "Role" {
			bound["Role "+b.Namespace+"/"+b.RoleRef.Name] = true
		} else {
			bound["ClusterRole "+b.RoleRef.Name] = true
		}
	}
	for _, r := range set.Cluster.ClusterRoles {
		if !bound["ClusterRole "+r.Name] {
			t.Errorf("ClusterRole %s is bound to nobody", r.Name)
		}
	}
	for _, r := range set.Cluster.Roles {
		if !bound["Role "+r.Namespace+"/"+r.Name] {
			t.Errorf("Role %s/%s is bound to nobody", r.Namespace, r.Name)
		}
	}
}

// grants is what each ServiceAccount (namespace/name) may do, by
// "<scope> <group>/<resource>", with sorted verbs. A binding to a role not
// in the set, a wildcard, a resourceNames restriction or a non-resource URL
// is an error: the table could not say what it grants.
func grants(set *manifest.Set) (map[string]map[string][]string, error) {
	out := map[string]map[string][]string{}
	add := func(subjects []rbacv1.Subject, bindingNS, scope string, rules []rbacv1.PolicyRule) error {
		for _, s := range subjects {
			if s.Kind != rbacv1.ServiceAccountKind {
				return fmt.Errorf("subject %s %s: only ServiceAccounts are expected", s.Kind, s.Name)
			}
			ns := s.Namespace
			if ns == "" {
				ns = bindingNS
			}
			sa := ns + "/" + s.Name
			if out[sa] == nil {
				out[sa] = map[string][]string{}
			}
			for _, r := range rules {
				if len(r.NonResourceURLs) > 0 || len(r.ResourceNames) > 0 {
					return fmt.Errorf("rule %+v: non-resource URLs and resource names are not expected", r)
				}
				for _, g := range r.APIGroups {
					for _, res := range r.Resources {
						for _, v := range r.Verbs {
							if g == "*" || res == "*" || v == "*" {
								return fmt.Errorf("rule %+v: a wildcard grants more than anyone can review", r)
							}
							if g == "" {
								g = "core"
							}
							k := scope + " " + g + "/" + res
							if !slices.Contains(out[sa][k], v) {
								out[sa][k] = append(out[sa][k], v)
								sort.Strings(out[sa][k])
							}
						}
					}
				}
			}
		}
		return nil
	}
	clusterRole := func(name string) (*rbacv1.ClusterRole, error) {
		i := slices.IndexFunc(set.Cluster.ClusterRoles, func(r *rbacv1.ClusterRole) bool { return r.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("ClusterRole %s is not in config/", name)
		}
		return set.Cluster.ClusterRoles[i], nil
	}
	for _, b := range set.Cluster.ClusterRoleBindings {
		r, err := clusterRole(b.RoleRef.Name)
		if err != nil {
			return nil, fmt.Errorf("ClusterRoleBinding %s: %w", b.Name, err)
		}
		if err := add(b.Subjects, "", "*", r.Rules); err != nil {
			return nil, fmt.Errorf("ClusterRoleBinding %s: %w", b.Name, err)
		}
	}
	for _, b := range set.Cluster.RoleBindings {
		var rules []rbacv1.PolicyRule
		if b.RoleRef.Kind == "ClusterRole" {
			r, err := clusterRole(b.RoleRef.Name)
			if err != nil {
				return nil, fmt.Errorf("RoleBinding %s/%s: %w", b.Namespace, b.Name, err)
			}
			rules = r.Rules
		} else {
			i := slices.IndexFunc(set.Cluster.Roles, func(r *rbacv1.Role) bool { return r.Namespace == b.Namespace && r.Name == b.RoleRef.Name })
			if i < 0 {
				return nil, fmt.Errorf("RoleBinding %s/%s: Role %s/%s is not in config/", b.Namespace, b.Name, b.Namespace, b.RoleRef.Name)
			}
			rules = set.Cluster.Roles[i].Rules
		}
		if err := add(b.Subjects, b.Namespace, b.Namespace, rules); err != nil {
			return nil, fmt.Errorf("RoleBinding %s/%s: %w", b.Namespace, b.Name, err)
		}
	}
	return out, nil
}

func TestGrantsRefusesWhatItCannotTabulate(t *testing.T) {
	const binding = `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}
subjects: [{kind: ServiceAccount, name: s, namespace: default}]
`
	for _, tc := range []struct{ name, role, want string }{
		{"wildcard verb", `rules: [{apiGroups: [""], resources: [pods], verbs: ["*"]}]`, "wildcard"},
		{"wildcard resource", `rules: [{apiGroups: [""], resources: ["*"], verbs: [get]}]`, "wildcard"},
		{"resource names", `rules: [{apiGroups: [""], resources: [pods], resourceNames: [p], verbs: [get]}]`, "resource names"},
		{"role elsewhere", "", "ClusterRole r is not in config/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := binding
			if tc.role != "" {
				doc += "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n" + tc.role + "\n"
			}
			set, err := manifest.Parse(context.Background(), strings.NewReader(doc), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := grants(set); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestServiceAccountsExist: every Deployment runs as a ServiceAccount of
// its own (not the namespace's default) that config/ creates, and every
// binding's subject is one config/ creates.
func TestServiceAccountsExist(t *testing.T) {
	set := loadShipped(t)
	exists := func(ns, name string) bool {
		return slices.ContainsFunc(set.Cluster.ServiceAccounts, func(sa *corev1.ServiceAccount) bool { return sa.Namespace == ns && sa.Name == name })
	}
	for _, d := range set.Cluster.Deployments {
		sa := d.Spec.Template.Spec.ServiceAccountName
		if sa == "" || sa == "default" {
			t.Errorf("Deployment %s/%s runs as the namespace's default ServiceAccount", d.Namespace, d.Name)
		} else if !exists(d.Namespace, sa) {
			t.Errorf("Deployment %s/%s: ServiceAccount %s/%s is not in config/", d.Namespace, d.Name, d.Namespace, sa)
		}
	}
	var subjects []rbacv1.Subject
	for _, b := range set.Cluster.ClusterRoleBindings {
		subjects = append(subjects, b.Subjects...)
	}
	for _, b := range set.Cluster.RoleBindings {
		for _, s := range b.Subjects {
			if s.Namespace == "" {
				s.Namespace = b.Namespace
			}
			subjects = append(subjects, s)
		}
	}
	for _, s := range subjects {
		if s.Kind == rbacv1.ServiceAccountKind && !exists(s.Namespace, s.Name) {
			t.Errorf("a binding names ServiceAccount %s/%s, which is not in config/", s.Namespace, s.Name)
		}
	}
}

// TestKoImagesAreMainPackages: every ko:// image in config/ (the functions'
// Services and the class's Deployments) names a main package of this
// module, which is what ko and the runner's -build can build.
func TestKoImagesAreMainPackages(t *testing.T) {
	set := loadShipped(t)
	module, err := modulePath(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var images []string
	for _, svc := range set.Services {
		for _, c := range svc.Spec.Template.Spec.Containers {
			images = append(images, c.Image)
		}
	}
	for _, d := range set.Cluster.Deployments {
		for _, c := range slices.Concat(d.Spec.Template.Spec.InitContainers, d.Spec.Template.Spec.Containers) {
			images = append(images, c.Image)
		}
	}
	if len(images) == 0 {
		t.Fatal("no images in config/")
	}
	for _, img := range images {
		if err := checkKoImage(module, repoRoot, img); err != nil {
			t.Error(err)
		}
	}
}

// checkKoImage: img is ko://<module>/<dir>, and <dir> under root holds a
// main package.
func checkKoImage(module, root, img string) error {
	importPath, ok := strings.CutPrefix(img, "ko://")
	if !ok {
		return fmt.Errorf("image %q is not a ko:// reference: ko would not build it", img)
	}
	rel, ok := strings.CutPrefix(importPath, module+"/")
	if !ok {
		return fmt.Errorf("image %q is not a package of %s", img, module)
	}
	dir := filepath.Join(root, filepath.FromSlash(rel))
	pkg, err := build.ImportDir(dir, 0)
	if err != nil {
		return fmt.Errorf("image %q: no Go package in %s: %v", img, dir, err)
	}
	if !pkg.IsCommand() {
		return fmt.Errorf("image %q: package %s is not a main package", img, pkg.Name)
	}
	return nil
}

func TestCheckKoImageFails(t *testing.T) {
	const module = "github.com/koffeeshop/koffeeshop"
	for _, tc := range []struct{ image, want string }{
		{"ghcr.io/koffeeshop/notify:latest", "not a ko:// reference"},
		{"ko://example.com/other/cmd", "not a package of"},
		{"ko://github.com/koffeeshop/koffeeshop/functions/ghost", "no Go package"},
		{"ko://github.com/koffeeshop/koffeeshop/broker", "not a main package"},
		{"ko://github.com/koffeeshop/koffeeshop/functions/notify", ""},
	} {
		err := checkKoImage(module, repoRoot, tc.image)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.image, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.image, err, tc.want)
		}
	}
}

func modulePath(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if m, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`), nil
		}
	}
	return "", fmt.Errorf("%s has no module line", gomod)
}

// natsEnv are the variables every component reads its NATS settings from
// (broker/natsconn), each a key of the koffeeshop-nats ConfigMap; only the
// URL must be there.
var natsEnv = []string{"NATS_URL", "NATS_CREDS", "NATS_CA", "NATS_CERT", "NATS_KEY"}

// TestDeploymentsAreLockedDown: every pod of the class runs non-root, with
// no privilege escalation, no capabilities, the runtime's default seccomp
// profile and a read-only root file system (the restricted Pod Security
// Standard, which the Namespace enforces); requests CPU and memory; is
// probed for readiness and liveness; knows its namespace; and reads NATS
// from the ConfigMap, with the Secret of files optional.
func TestDeploymentsAreLockedDown(t *testing.T) {
	set := loadShipped(t)
	i := slices.IndexFunc(set.Cluster.Namespaces, func(ns *corev1.Namespace) bool { return ns.Name == systemNamespace })
	if i < 0 {
		t.Fatalf("no Namespace %s", systemNamespace)
	}
	if got := set.Cluster.Namespaces[i].Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("Namespace %s enforces Pod Security %q, want restricted", systemNamespace, got)
	}
	if len(set.Cluster.Deployments) == 0 {
		t.Fatal("no Deployments")
	}
	for _, d := range set.Cluster.Deployments {
		if err := checkLockedDown(set, d); err != nil {
			t.Errorf("Deployment %s/%s: %v", d.Namespace, d.Name, err)
		}
	}
}

func checkLockedDown(set *manifest.Set, d *appsv1.Deployment) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ps := d.Spec.Template.Spec
	if ps.HostNetwork || ps.HostPID || ps.HostIPC {
		fail("uses the host's network, PID or IPC namespace")
	}
	pod := ps.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	nats := findConfigMap(set, d.Namespace, "koffeeshop-nats")
	if nats == nil {
		fail("no ConfigMap %s/koffeeshop-nats in config/", d.Namespace)
	}
	secretVolumes := map[string]bool{}
	for _, v := range ps.Volumes {
		if v.Secret == nil {
			continue
		}
		if v.Secret.Optional == nil || !*v.Secret.Optional {
			fail("volume %s: Secret %s is not optional; the pod would not start without it", v.Name, v.Secret.SecretName)
		}
		secretVolumes[v.Name] = true
	}
	if len(secretVolumes) == 0 {
		fail("mounts no Secret for the NATS credentials and TLS files")
	}
	for _, c := range ps.Containers {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		nonRoot := sc.RunAsNonRoot
		if nonRoot == nil {
			nonRoot = pod.RunAsNonRoot
		}
		if nonRoot == nil || !*nonRoot {
			fail("container %s: runAsNonRoot is not true", c.Name)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 || pod.RunAsUser != nil && *pod.RunAsUser == 0 {
			fail("container %s runs as uid 0", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			fail("container %s: allowPrivilegeEscalation is not false", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			fail("container %s is privileged", c.Name)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			fail("container %s: capabilities are not drop [ALL], add none", c.Name)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = pod.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			fail("container %s: seccomp profile is not RuntimeDefault", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			fail("container %s: the root file system is writable", c.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			fail("container %s requests no CPU or no memory", c.Name)
		}
		for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path == "" {
				fail("container %s has no HTTP %s probe", c.Name, name)
			}
		}
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		if e := env["SYSTEM_NAMESPACE"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
			fail("container %s: SYSTEM_NAMESPACE is not the pod's metadata.namespace", c.Name)
		}
		for _, name := range natsEnv {
			e, ok := env[name]
			if !ok || e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil || e.ValueFrom.ConfigMapKeyRef.Name != "koffeeshop-nats" || e.ValueFrom.ConfigMapKeyRef.Key != name {
				fail("container %s: %s is not the %s key of the ConfigMap koffeeshop-nats", c.Name, name, name)
				continue
			}
			optional := e.ValueFrom.ConfigMapKeyRef.Optional != nil && *e.ValueFrom.ConfigMapKeyRef.Optional
			if name == "NATS_URL" {
				if optional {
					fail("container %s: NATS_URL is optional; without it the URL would silently be the built-in default", c.Name)
				}
				if nats != nil && nats.Data[name] == "" {
					fail("ConfigMap koffeeshop-nats has no %s", name)
				}
			} else if !optional {
				fail("container %s: %s is required; a cluster without NATS credentials could not start the pod", c.Name, name)
			}
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			if secretVolumes[m.Name] {
				mounted = true
				if !m.ReadOnly {
					fail("container %s mounts the Secret %s writable", c.Name, m.Name)
				}
			}
		}
		if !mounted {
			fail("container %s does not mount the NATS Secret", c.Name)
		}
	}
	return errors.Join(errs...)
}

func TestCheckLockedDownFails(t *testing.T) {
	set := loadShipped(t)
	base := deployment(set, systemNamespace, "koffeeshop-trigger-dispatcher")
	if base == nil {
		t.Fatal("no dispatcher Deployment")
	}
	if err := checkLockedDown(set, base); err != nil {
		t.Fatalf("the shipped dispatcher: %v", err)
	}
	no := false
	for _, tc := range []struct {
		name   string
		change func(*corev1.PodSpec)
		want   string
	}{
		{"writable root", func(ps *corev1.PodSpec) { ps.Containers[0].SecurityContext.ReadOnlyRootFilesystem = &no }, "root file system is writable"},
		{"capabilities kept", func(ps *corev1.PodSpec) { ps.Containers[0].SecurityContext.Capabilities = nil }, "drop [ALL]"},
		{"no seccomp", func(ps *corev1.PodSpec) {
			ps.SecurityContext.SeccompProfile = nil
			ps.Containers[0].SecurityContext.SeccompProfile = nil
		}, "RuntimeDefault"},
		{"required Secret", func(ps *corev1.PodSpec) { ps.Volumes[0].Secret.Optional = nil }, "not optional"},
		{"optional URL", func(ps *corev1.PodSpec) {
			yes := true
			for i := range ps.Containers[0].Env {
				if e := &ps.Containers[0].Env[i]; e.Name == "NATS_URL" {
					e.ValueFrom.ConfigMapKeyRef.Optional = &yes
				}
			}
		}, "NATS_URL is optional"},
		{"no requests", func(ps *corev1.PodSpec) { ps.Containers[0].Resources = corev1.ResourceRequirements{} }, "requests no CPU"},
		{"no liveness probe", func(ps *corev1.PodSpec) { ps.Containers[0].LivenessProbe = nil }, "no HTTP liveness probe"},
		{"namespace by hand", func(ps *corev1.PodSpec) {
			for i := range ps.Containers[0].Env {
				if e := &ps.Containers[0].Env[i]; e.Name == "SYSTEM_NAMESPACE" {
					e.ValueFrom, e.Value = nil, systemNamespace
				}
			}
		}, "SYSTEM_NAMESPACE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := base.DeepCopy()
			tc.change(&d.Spec.Template.Spec)
			if err := checkLockedDown(set, d); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestProbesAreWhereTheBinariesServeThem: the controller's probes are
// knative.dev/pkg/injection's server (HealthCheckDefaultPort, /readiness
// and /health); the ingress serves events on 8080, and it and the
// dispatcher serve /health/readiness, /health/liveness and /metrics on
// 9090.
func TestProbesAreWhereTheBinariesServeThem(t *testing.T) {
	set := loadShipped(t)
	type probes struct {
		readiness, liveness string
		port                int32
	}
	want := map[string]probes{
		"koffeeshop-controller":         {"/readiness", "/health", int32(injection.HealthCheckDefaultPort)},
		"koffeeshop-broker-ingress":     {"/health/readiness", "/health/liveness", 9090},
		"koffeeshop-trigger-dispatcher": {"/health/readiness", "/health/liveness", 9090},
	}
	for name, w := range want {
		d := deployment(set, systemNamespace, name)
		if d == nil {
			t.Errorf("no Deployment %s", name)
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		for kind, p := range map[string]*corev1.Probe{w.readiness: c.ReadinessProbe, w.liveness: c.LivenessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s: no HTTP probe for %s", name, kind)
				continue
			}
			if p.HTTPGet.Path != kind {
				t.Errorf("%s: probe path %s, want %s", name, p.HTTPGet.Path, kind)
			}
			if port, ok := containerPort(c, p.HTTPGet.Port.String()); !ok || port != w.port {
				t.Errorf("%s: probe %s on port %s (%d), want %d", name, kind, p.HTTPGet.Port.String(), port, w.port)
			}
		}
	}
	ingress := deployment(set, systemNamespace, "koffeeshop-broker-ingress")
	if ingress == nil {
		t.Fatal("no ingress Deployment")
	}
	if port, ok := containerPort(ingress.Spec.Template.Spec.Containers[0], "http"); !ok || port != 8080 {
		t.Errorf("ingress port http = %d, want 8080", port)
	}
}

// containerPort resolves a probe's or a Service's port, by name or number,
// to one the container declares.
func containerPort(c corev1.Container, port string) (int32, bool) {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// TestIngressServiceIsTheBrokersAddress: the controller publishes every
// Broker's address at the Service broker/reconciler names by default (the
// controller's Deployment does not override it); that Service is in
// config/, answers on port 80 and sends to the ingress pods' 8080, and to
// no other pods.
func TestIngressServiceIsTheBrokersAddress(t *testing.T) {
	set := loadShipped(t)
	ctrl := deployment(set, systemNamespace, "koffeeshop-controller")
	if ctrl == nil {
		t.Fatal("no controller Deployment")
	}
	name, ns := brokerreconciler.DefaultIngressName, brokerreconciler.DefaultIngressNamespace
	for _, e := range ctrl.Spec.Template.Spec.Containers[0].Env {
		switch e.Name {
		case "INGRESS_SERVICE_NAME":
			name = e.Value
		case "INGRESS_NAMESPACE":
			ns = e.Value
		}
	}
	i := slices.IndexFunc(set.Cluster.Services, func(s *corev1.Service) bool { return s.Namespace == ns && s.Name == name })
	if i < 0 {
		t.Fatalf("Broker addresses point at Service %s/%s, which is not in config/", ns, name)
	}
	svc := set.Cluster.Services[i]
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 {
		t.Fatalf("Service %s/%s ports %+v, want one, 80", ns, name, svc.Spec.Ports)
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	var selected []string
	for _, d := range set.Cluster.Deployments {
		if d.Namespace == ns && len(svc.Spec.Selector) > 0 && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			selected = append(selected, d.Name)
		}
	}
	if !slices.Equal(selected, []string{"koffeeshop-broker-ingress"}) {
		t.Fatalf("Service %s/%s selects the pods of %v, want those of koffeeshop-broker-ingress alone", ns, name, selected)
	}
	ingress := deployment(set, ns, "koffeeshop-broker-ingress")
	if port, ok := containerPort(ingress.Spec.Template.Spec.Containers[0], svc.Spec.Ports[0].TargetPort.String()); !ok || port != 8080 {
		t.Errorf("Service port 80 goes to the ingress's %q (%d), want its 8080", svc.Spec.Ports[0].TargetPort.String(), port)
	}
}

// TestIngressTokenComesFromAnOptionalSecret: broker/cmd/ingress reads its
// bearer token from $INGRESS_TOKEN. It comes from a Secret, so no manifest
// holds it, and an optional one, so the ingress starts without it.
func TestIngressTokenComesFromAnOptionalSecret(t *testing.T) {
	set := loadShipped(t)
	d := deployment(set, systemNamespace, "koffeeshop-broker-ingress")
	if d == nil {
		t.Fatal("no ingress Deployment")
	}
	i := slices.IndexFunc(d.Spec.Template.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "INGRESS_TOKEN" })
	if i < 0 {
		t.Fatal("the ingress has no INGRESS_TOKEN")
	}
	e := d.Spec.Template.Spec.Containers[0].Env[i]
	if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Fatalf("INGRESS_TOKEN is not from a Secret: %+v", e)
	}
	if ref := e.ValueFrom.SecretKeyRef; ref.Optional == nil || !*ref.Optional {
		t.Errorf("INGRESS_TOKEN's Secret %s is required; the ingress would not start without it", ref.Name)
	}
	for _, d := range set.Cluster.Deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if strings.Contains(e.Name, "TOKEN") && e.Value != "" {
					t.Errorf("Deployment %s: %s has a value in the manifest", d.Name, e.Name)
				}
			}
		}
	}
}

// TestApplyOrder: ko and kubectl apply config/ file by file in name order,
// each file's documents in order, and an object in a namespace that does
// not exist yet is refused. So every object in koffeeshop-system comes
// after its Namespace; the other objects are in default, which every
// cluster has.
func TestApplyOrder(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(configDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(paths)
	created := false
	for _, p := range paths {
		docs, err := documents(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docs {
			switch {
			case doc.Kind == "Namespace" && doc.Metadata.Name == systemNamespace:
				created = true
			case doc.Metadata.Namespace == systemNamespace && !created:
				t.Errorf("%s: document %d, %s %s, comes before the Namespace %s", p, i+1, doc.Kind, doc.Metadata.Name, systemNamespace)
			case doc.Metadata.Namespace != "" && doc.Metadata.Namespace != systemNamespace && doc.Metadata.Namespace != manifest.DefaultNamespace:
				t.Errorf("%s: document %d, %s %s, is in namespace %s, which config/ does not create", p, i+1, doc.Kind, doc.Metadata.Name, doc.Metadata.Namespace)
			}
		}
	}
	if !created {
		t.Errorf("no Namespace %s in config/", systemNamespace)
	}
}

type docMeta struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func documents(path string) ([]docMeta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []docMeta
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var m docMeta
		if err := yaml.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if m.Kind != "" {
			out = append(out, m)
		}
	}
}
