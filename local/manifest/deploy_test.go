package manifest_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"knative.dev/eventing/pkg/apis/eventing"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	"sigs.k8s.io/yaml"

	"github.com/koffeeshop/koffeeshop/local/manifest"
)

// TestKoDeploysWhatTheRunnerLoads: `ko apply -f config/` reads only the files
// ending exactly in .yaml or .json, while the runner also reads .yml and any
// case. A manifest only one of them sees would make the cluster differ from
// `make run`.
func TestKoDeploysWhatTheRunnerLoads(t *testing.T) {
	entries, err := os.ReadDir(configDir)
	if err != nil {
		t.Fatal(err)
	}
	var manifests int
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		ext := filepath.Ext(e.Name())
		switch strings.ToLower(ext) {
		case ".yaml", ".yml", ".json":
			manifests++
			if ext != ".yaml" && ext != ".json" {
				t.Errorf("%s: the runner loads it but ko skips it; name it .yaml", e.Name())
			}
		}
	}
	if manifests == 0 {
		t.Fatal("no manifests in config/")
	}
}

// channelTemplateKey is the ConfigMap key that eventing's MTChannelBasedBroker
// reads its channel template from (knative.dev/eventing
// pkg/reconciler/broker/config.go).
const channelTemplateKey = "channel-template-spec"

// mtChannelBroker is the alternative Broker setup: Knative's
// MTChannelBasedBroker on eventing-natss' JetStream channel.
const mtChannelBroker = configDir + "/alternatives/mt-channel-broker"

// loadAlternative loads the function manifests of config/ with the
// alternative Broker in place of config/broker.yaml, as its README applies
// them.
func loadAlternative(t *testing.T) *manifest.Set {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(mtChannelBroker, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s: %v", mtChannelBroker, err)
	}
	for _, fn := range []string{"take-order", "prepare-beverage", "notify"} {
		paths = append(paths, filepath.Join(configDir, fn+".yaml"))
	}
	var all bytes.Buffer
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&all, "---\n%s\n", b)
	}
	set, err := manifest.Parse(context.Background(), &all, mtChannelBroker)
	if err != nil {
		t.Fatalf("%s with the functions of config/ does not validate: %v", mtChannelBroker, err)
	}
	return set
}

// TestAlternativeBrokerUsesJetStreamChannel checks the alternative's wiring:
// class MTChannelBasedBroker, whose spec.config names a ConfigMap beside it
// whose channel template is eventing-natss' NatsJetStreamChannel, and the
// same delivery (retries, backoff, timeout, dead-letter sink) as the
// Broker in config/.
func TestAlternativeBrokerUsesJetStreamChannel(t *testing.T) {
	set := loadAlternative(t)
	if len(set.Brokers) != 1 {
		t.Fatalf("%s has %d Brokers, want 1", mtChannelBroker, len(set.Brokers))
	}
	alt := set.Brokers[0]
	if err := checkJetStreamBroker(set, alt); err != nil {
		t.Errorf("Broker %s/%s: %v", alt.Namespace, alt.Name, err)
	}
	shipped, err := manifest.LoadDir(context.Background(), configDir)
	if err != nil {
		t.Fatal(err)
	}
	b := shipped.Broker(alt.Namespace, alt.Name)
	if b == nil {
		t.Fatalf("config/ has no Broker %s/%s", alt.Namespace, alt.Name)
	}
	if !equality.Semantic.DeepEqual(b.Spec.Delivery, alt.Spec.Delivery) {
		t.Errorf("the alternative's delivery differs from config/broker.yaml's:\n%+v\n%+v", alt.Spec.Delivery, b.Spec.Delivery)
	}
}

func checkJetStreamBroker(set *manifest.Set, b *eventingv1.Broker) error {
	if class := b.Annotations[eventing.BrokerClassKey]; class != eventing.MTChannelBrokerClassValue {
		return fmt.Errorf("class %q, want %s", class, eventing.MTChannelBrokerClassValue)
	}
	ref := b.Spec.Config
	if ref == nil || ref.Kind != "ConfigMap" || ref.APIVersion != "v1" {
		return fmt.Errorf("spec.config %+v is not a v1 ConfigMap", ref)
	}
	i := slices.IndexFunc(set.ConfigMaps, func(cm *corev1.ConfigMap) bool {
		return cm.Namespace == ref.Namespace && cm.Name == ref.Name
	})
	if i < 0 {
		return fmt.Errorf("ConfigMap %s/%s is not in the manifests", ref.Namespace, ref.Name)
	}
	raw, ok := set.ConfigMaps[i].Data[channelTemplateKey]
	if !ok {
		return fmt.Errorf("ConfigMap %s/%s has no %s", ref.Namespace, ref.Name, channelTemplateKey)
	}
	var tmpl messagingv1.ChannelTemplateSpec
	if err := yaml.UnmarshalStrict([]byte(raw), &tmpl); err != nil {
		return fmt.Errorf("%s: %w", channelTemplateKey, err)
	}
	if tmpl.APIVersion != "messaging.knative.dev/v1alpha1" || tmpl.Kind != "NatsJetStreamChannel" {
		return fmt.Errorf("channel template is %s %s, want messaging.knative.dev/v1alpha1 NatsJetStreamChannel", tmpl.APIVersion, tmpl.Kind)
	}
	return nil
}

func TestCheckJetStreamBrokerFails(t *testing.T) {
	const cm = `
apiVersion: v1
kind: ConfigMap
metadata: {name: ch, namespace: default}
data:
  %s: |
    apiVersion: %s
    kind: %s
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}
spec:
  config: {apiVersion: v1, kind: ConfigMap, name: ch%s}
`
	cases := []struct {
		name, key, apiVersion, kind, ns, want string
	}{
		{"in-memory channel", channelTemplateKey, "messaging.knative.dev/v1", "InMemoryChannel", ", namespace: default", "want messaging.knative.dev/v1alpha1 NatsJetStreamChannel"},
		{"misspelt key", "channel-template", "messaging.knative.dev/v1alpha1", "NatsJetStreamChannel", ", namespace: default", "has no channel-template-spec"},
		{"config elsewhere", channelTemplateKey, "messaging.knative.dev/v1alpha1", "NatsJetStreamChannel", ", namespace: knative-eventing", "ConfigMap knative-eventing/ch is not in the manifests"},
		{"ok", channelTemplateKey, "messaging.knative.dev/v1alpha1", "NatsJetStreamChannel", ", namespace: default", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := fmt.Sprintf(cm, tc.key, tc.apiVersion, tc.kind, tc.ns)
			set, err := manifest.Parse(context.Background(), strings.NewReader(doc), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			err = checkJetStreamBroker(set, set.Brokers[0])
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// clusterSet is what config/cluster holds: the NATS server that the
// Broker class (and the alternative's eventing-natss) connect to.
type clusterSet struct {
	namespaces   []*corev1.Namespace
	services     []*corev1.Service
	statefulSets []*appsv1.StatefulSet
}

func loadClusterDir(dir string) (*clusterSet, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no manifests in %s", dir)
	}
	s := &clusterSet{}
	for _, p := range paths {
		if err := s.decodeFile(p); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *clusterSet) decodeFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", path, doc, err)
		}
		if err := s.add(raw); err != nil {
			return fmt.Errorf("%s: document %d: %w", path, doc, err)
		}
	}
}

func (s *clusterSet) add(raw []byte) error {
	var meta struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return err
	}
	var obj any
	switch meta.APIVersion + " " + meta.Kind {
	case "v1 Namespace":
		ns := &corev1.Namespace{}
		s.namespaces, obj = append(s.namespaces, ns), ns
	case "v1 Service":
		svc := &corev1.Service{}
		s.services, obj = append(s.services, svc), svc
	case "apps/v1 StatefulSet":
		sts := &appsv1.StatefulSet{}
		s.statefulSets, obj = append(s.statefulSets, sts), sts
	case " ":
		return nil // only comments
	default:
		return fmt.Errorf("unexpected kind %s %s", meta.APIVersion, meta.Kind)
	}
	if err := yaml.UnmarshalStrict(raw, obj); err != nil {
		return fmt.Errorf("%s: %w", meta.Kind, err)
	}
	return nil
}

// natsClientURLs are the NATS URLs config/ and the alternative hand their
// clients: the koffeeshop-nats ConfigMap of the Broker class, and
// eventing-natss' config-nats (its eventing-nats key; eventing-natss:
// pkg/common/constants SettingsConfigMapName and
// EventingNatsSettingsConfigKey, in the eventing system namespace).
func natsClientURLs(t *testing.T) map[string]string {
	t.Helper()
	urls := map[string]string{}
	shipped, err := manifest.LoadDir(context.Background(), configDir)
	if err != nil {
		t.Fatal(err)
	}
	cm := findConfigMap(shipped, "koffeeshop-system", "koffeeshop-nats")
	if cm == nil {
		t.Fatal("no ConfigMap koffeeshop-system/koffeeshop-nats in config/")
	}
	urls["config/300-nats.yaml"] = cm.Data["NATS_URL"]

	alt := loadAlternative(t)
	cm = findConfigMap(alt, "knative-eventing", "config-nats")
	if cm == nil {
		t.Fatalf("no ConfigMap knative-eventing/config-nats in %s", mtChannelBroker)
	}
	var nc struct {
		URL string `json:"url"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["eventing-nats"]), &nc); err != nil {
		t.Fatalf("config-nats eventing-nats: %v", err)
	}
	urls[mtChannelBroker+"/config-nats.yaml"] = nc.URL
	return urls
}

func findConfigMap(set *manifest.Set, ns, name string) *corev1.ConfigMap {
	i := slices.IndexFunc(set.ConfigMaps, func(cm *corev1.ConfigMap) bool { return cm.Namespace == ns && cm.Name == name })
	if i < 0 {
		return nil
	}
	return set.ConfigMaps[i]
}

// TestClusterManifests follows the path from each NATS client to JetStream
// through config/cluster: the URL names a Service there, on that Service's
// client port, whose pods are a StatefulSet running nats-server with
// JetStream on a persistent volume.
func TestClusterManifests(t *testing.T) {
	s, err := loadClusterDir(filepath.Join(configDir, "cluster"))
	if err != nil {
		t.Fatal(err)
	}
	for from, url := range natsClientURLs(t) {
		if err := s.checkNATSPath(url); err != nil {
			t.Errorf("%s: %v", from, err)
		}
	}
}

func (s *clusterSet) checkNATSPath(natsURL string) error {
	u, err := url.Parse(natsURL)
	if err != nil || u.Scheme != "nats" {
		return fmt.Errorf("url %q is not a nats:// URL", natsURL)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return fmt.Errorf("url %q: %w", natsURL, err)
	}
	name, ns, ok := strings.Cut(strings.TrimSuffix(host, ".svc.cluster.local"), ".")
	if !ok || strings.Contains(ns, ".") {
		return fmt.Errorf("url %q does not name a Service as <name>.<namespace>.svc.cluster.local", natsURL)
	}
	if !slices.ContainsFunc(s.namespaces, func(n *corev1.Namespace) bool { return n.Name == ns }) {
		return fmt.Errorf("namespace %s is not in config/cluster", ns)
	}
	j := slices.IndexFunc(s.services, func(svc *corev1.Service) bool { return svc.Namespace == ns && svc.Name == name })
	if j < 0 {
		return fmt.Errorf("url names Service %s/%s, which is not in config/cluster", ns, name)
	}
	svc := s.services[j]
	k := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return fmt.Sprint(p.Port) == port })
	if k < 0 {
		return fmt.Errorf("Service %s/%s has no port %s", ns, name, port)
	}
	target := svc.Spec.Ports[k].TargetPort.String()

	for _, sts := range s.statefulSets {
		if sts.Namespace != ns || !selects(svc.Spec.Selector, sts.Spec.Template.Labels) {
			continue
		}
		return checkNATSServer(sts, target)
	}
	return fmt.Errorf("no StatefulSet in %s has the pods that Service %s selects", ns, name)
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkNATSServer: the container serves the Service's target port, runs
// JetStream, and keeps its store on a volume claim template.
func checkNATSServer(sts *appsv1.StatefulSet, targetPort string) error {
	for _, c := range sts.Spec.Template.Spec.Containers {
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
			return p.Name == targetPort || fmt.Sprint(p.ContainerPort) == targetPort
		}) {
			continue
		}
		if !slices.Contains(c.Args, "--jetstream") && !slices.Contains(c.Args, "-js") {
			return fmt.Errorf("StatefulSet %s: nats-server runs without --jetstream", sts.Name)
		}
		var store string
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--store_dir="); ok {
				store = v
			}
		}
		if store == "" {
			return fmt.Errorf("StatefulSet %s: no --store_dir", sts.Name)
		}
		for _, m := range c.VolumeMounts {
			if m.MountPath != store {
				continue
			}
			if slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == m.Name }) {
				return nil
			}
			return fmt.Errorf("StatefulSet %s: %s is not on a volume claim template", sts.Name, store)
		}
		return fmt.Errorf("StatefulSet %s: store %s is not a mounted volume", sts.Name, store)
	}
	return fmt.Errorf("StatefulSet %s has no container serving port %s", sts.Name, targetPort)
}

func TestClusterManifestsFail(t *testing.T) {
	const good = "nats://nats.nats-io.svc.cluster.local:4222"
	nats, err := os.ReadFile(filepath.Join(configDir, "cluster", "nats.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, url, from, to, want string
	}{
		{"wrong host", "nats://jetstream.nats-io.svc.cluster.local:4222", "", "", "Service nats-io/jetstream"},
		{"wrong port", "nats://nats.nats-io.svc.cluster.local:4223", "", "", "no port 4223"},
		{"not a Service name", "nats://nats.example.com:4222", "", "", "does not name a Service"},
		{"no jetstream", good, "- --jetstream", "- --debug", "without --jetstream"},
		{"store not persistent", good, "mountPath: /data", "mountPath: /scratch", "not a mounted volume"},
		{"selector mismatch", good, "  selector:\n    app.kubernetes.io/name: nats\n", "  selector:\n    app.kubernetes.io/name: other\n", "selects"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			body := string(nats)
			if tc.from != "" {
				if !strings.Contains(body, tc.from) {
					t.Fatalf("nats.yaml does not contain %q", tc.from)
				}
				body = strings.Replace(body, tc.from, tc.to, 1)
			}
			if err := os.WriteFile(filepath.Join(dir, "nats.yaml"), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := loadClusterDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			err = s.checkNATSPath(tc.url)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
