// Package manifest loads the Knative manifests in config/ with Knative's own
// API types, applies their defaults and runs their validation, exactly as the
// Knative webhooks would before admitting them to a cluster. The Kubernetes
// objects beside them (the control and data plane of the KoffeeshopJetStream
// Broker class) are decoded strictly into their k8s.io/api types, checked,
// and kept apart in Set.Cluster: the local runner does not run them.
package manifest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/feature"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

// DefaultNamespace is the namespace of a manifest that names none, as with
// kubectl against a context without a namespace.
const DefaultNamespace = "default"

var (
	brokerGVK    = eventingv1.SchemeGroupVersion.WithKind("Broker")
	triggerGVK   = eventingv1.SchemeGroupVersion.WithKind("Trigger")
	serviceGVK   = servingv1.SchemeGroupVersion.WithKind("Service")
	configMapGVK = corev1.SchemeGroupVersion.WithKind("ConfigMap")
	bindingGVK   = sourcesv1.SchemeGroupVersion.WithKind("SinkBinding")
)

// Set is every resource found in a directory of manifests.
type Set struct {
	Brokers    []*eventingv1.Broker
	Triggers   []*eventingv1.Trigger
	Services   []*servingv1.Service
	ConfigMaps []*corev1.ConfigMap
	// SinkBindings say where a function's K_SINK points: the local runner
	// sets it as Knative's SinkBinding does on a cluster.
	SinkBindings []*sourcesv1.SinkBinding
	// Cluster holds what only a cluster runs: Namespaces, ServiceAccounts,
	// RBAC, Deployments and Kubernetes Services.
	Cluster ClusterObjects
}

// LoadDir reads every .yaml, .yml and .json file in each dir (not
// recursively, as `kubectl apply -f dir` does) into one Set, then defaults
// and validates the result as a whole.
func LoadDir(ctx context.Context, dirs ...string) (*Set, error) {
	s := &Set{}
	for _, dir := range dirs {
		if err := s.decodeDir(dir); err != nil {
			return nil, err
		}
	}
	if err := s.Finish(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Set) decodeDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read config dir: %w", err)
	}
	var names []string
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".yaml", ".yml", ".json":
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return fmt.Errorf("config dir %s: no manifests found", dir)
	}
	for _, n := range names {
		path := filepath.Join(dir, n)
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("open manifest: %w", err)
		}
		err = s.decode(f, path)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Parse reads a multi-document YAML or JSON stream into a Set, then defaults
// and validates it. name is used in error messages.
func Parse(ctx context.Context, r io.Reader, name string) (*Set, error) {
	s := &Set{}
	if err := s.decode(r, name); err != nil {
		return nil, err
	}
	if err := s.Finish(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Set) decode(r io.Reader, name string) error {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || isOnlyComments(raw) {
			continue
		}
		if err := s.add(raw); err != nil {
			return fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
	}
}

func isOnlyComments(raw []byte) bool {
	for _, line := range bytes.Split(raw, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return false
		}
	}
	return true
}

func (s *Set) add(raw []byte) error {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	gv, err := schema.ParseGroupVersion(meta.APIVersion)
	if err != nil {
		return fmt.Errorf("apiVersion %q: %w", meta.APIVersion, err)
	}
	gvk := gv.WithKind(meta.Kind)
	switch gvk {
	case brokerGVK:
		b := &eventingv1.Broker{}
		if err := yaml.UnmarshalStrict(raw, b); err != nil {
			return fmt.Errorf("Broker: %w", err)
		}
		s.Brokers = append(s.Brokers, b)
	case triggerGVK:
		t := &eventingv1.Trigger{}
		if err := yaml.UnmarshalStrict(raw, t); err != nil {
			return fmt.Errorf("Trigger: %w", err)
		}
		s.Triggers = append(s.Triggers, t)
	case serviceGVK:
		svc := &servingv1.Service{}
		if err := yaml.UnmarshalStrict(raw, svc); err != nil {
			return fmt.Errorf("Service: %w", err)
		}
		s.Services = append(s.Services, svc)
	case configMapGVK:
		cm := &corev1.ConfigMap{}
		if err := yaml.UnmarshalStrict(raw, cm); err != nil {
			return fmt.Errorf("ConfigMap: %w", err)
		}
		s.ConfigMaps = append(s.ConfigMaps, cm)
	case bindingGVK:
		sb := &sourcesv1.SinkBinding{}
		if err := yaml.UnmarshalStrict(raw, sb); err != nil {
			return fmt.Errorf("SinkBinding: %w", err)
		}
		s.SinkBindings = append(s.SinkBindings, sb)
	default:
		if ok, err := s.Cluster.add(gvk, raw); ok {
			return err
		}
		return fmt.Errorf("unsupported kind %s %s", meta.APIVersion, meta.Kind)
	}
	return nil
}

// Finish applies namespace and Knative defaults, runs each resource's own
// Validate (Knative's for Knative resources; for the Kubernetes objects in
// Cluster, the API machinery's checks of metadata and what the API server
// refuses) and then checks the references between them: every Trigger names
// a Broker in the set, and every Trigger subscriber or dead-letter sink that
// refers to a Service names one in the set.
func (s *Set) Finish(ctx context.Context) error {
	// Validate against the cluster's feature flags when the caller put them in
	// ctx (feature.ToContext), else against Knative's defaults, as the
	// webhook of a fresh install would.
	ctx = apis.WithinCreate(feature.ToContext(ctx, feature.FromContextOrDefaults(ctx)))
	var errs []error
	for _, b := range s.Brokers {
		defaultNamespace(&b.Namespace)
		b.SetDefaults(ctx)
		if fe := b.Validate(ctx).Filter(apis.ErrorLevel); fe != nil {
			errs = append(errs, fmt.Errorf("Broker %s/%s: %w", b.Namespace, b.Name, fe))
		}
	}
	for _, svc := range s.Services {
		defaultNamespace(&svc.Namespace)
		svc.SetDefaults(ctx)
		if fe := svc.Validate(ctx).Filter(apis.ErrorLevel); fe != nil {
			errs = append(errs, fmt.Errorf("Service %s/%s: %w", svc.Namespace, svc.Name, fe))
		}
	}
	for _, t := range s.Triggers {
		defaultNamespace(&t.Namespace)
		t.SetDefaults(ctx)
		if fe := t.Validate(ctx).Filter(apis.ErrorLevel); fe != nil {
			errs = append(errs, fmt.Errorf("Trigger %s/%s: %w", t.Namespace, t.Name, fe))
		}
	}
	for _, cm := range s.ConfigMaps {
		defaultNamespace(&cm.Namespace)
		if err := validateConfigMap(cm); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sb := range s.SinkBindings {
		defaultNamespace(&sb.Namespace)
		sb.SetDefaults(ctx)
		if fe := sb.Validate(ctx).Filter(apis.ErrorLevel); fe != nil {
			errs = append(errs, fmt.Errorf("SinkBinding %s/%s: %w", sb.Namespace, sb.Name, fe))
		}
	}
	errs = append(errs, s.Cluster.finish()...)
	errs = append(errs, s.checkUnique()...)
	errs = append(errs, s.checkReferences()...)
	return errors.Join(errs...)
}

func defaultNamespace(ns *string) {
	if *ns == "" {
		*ns = DefaultNamespace
	}
}

func (s *Set) checkUnique() []error {
	var errs []error
	seen := map[string]bool{}
	check := func(kind, ns, name string) {
		k := kind + " " + ns + "/" + name
		if seen[k] {
			errs = append(errs, fmt.Errorf("%s is defined twice", k))
		}
		seen[k] = true
	}
	for _, b := range s.Brokers {
		check("Broker", b.Namespace, b.Name)
	}
	for _, t := range s.Triggers {
		check("Trigger", t.Namespace, t.Name)
	}
	for _, svc := range s.Services {
		check("Service", svc.Namespace, svc.Name)
	}
	for _, cm := range s.ConfigMaps {
		check("ConfigMap", cm.Namespace, cm.Name)
	}
	for _, sb := range s.SinkBindings {
		check("SinkBinding", sb.Namespace, sb.Name)
	}
	s.Cluster.checkUnique(check)
	return errs
}

func (s *Set) checkReferences() []error {
	var errs []error
	for _, t := range s.Triggers {
		if s.Broker(t.Namespace, TriggerBroker(t)) == nil {
			errs = append(errs, fmt.Errorf("Trigger %s/%s: broker %q is not defined in config", t.Namespace, t.Name, TriggerBroker(t)))
		}
		if ref := t.Spec.Subscriber.Ref; ref != nil {
			if err := s.checkServiceRef(ref.APIVersion, ref.Kind, refNamespace(ref.Namespace, t.Namespace), ref.Name); err != nil {
				errs = append(errs, fmt.Errorf("Trigger %s/%s: subscriber: %w", t.Namespace, t.Name, err))
			}
		}
		if d := t.Spec.Delivery; d != nil && d.DeadLetterSink != nil && d.DeadLetterSink.Ref != nil {
			ref := d.DeadLetterSink.Ref
			if err := s.checkServiceRef(ref.APIVersion, ref.Kind, refNamespace(ref.Namespace, t.Namespace), ref.Name); err != nil {
				errs = append(errs, fmt.Errorf("Trigger %s/%s: deadLetterSink: %w", t.Namespace, t.Name, err))
			}
		}
	}
	for _, sb := range s.SinkBindings {
		if err := s.checkBinding(sb); err != nil {
			errs = append(errs, fmt.Errorf("SinkBinding %s/%s: %w", sb.Namespace, sb.Name, err))
		}
	}
	for _, b := range s.Brokers {
		if d := b.Spec.Delivery; d != nil && d.DeadLetterSink != nil && d.DeadLetterSink.Ref != nil {
			ref := d.DeadLetterSink.Ref
			if err := s.checkServiceRef(ref.APIVersion, ref.Kind, refNamespace(ref.Namespace, b.Namespace), ref.Name); err != nil {
				errs = append(errs, fmt.Errorf("Broker %s/%s: deadLetterSink: %w", b.Namespace, b.Name, err))
			}
		}
	}
	return errs
}

func refNamespace(ns, parent string) string {
	if ns == "" {
		return parent
	}
	return ns
}

func (s *Set) checkServiceRef(apiVersion, kind, ns, name string) error {
	if apiVersion != servingv1.SchemeGroupVersion.String() || kind != "Service" {
		return fmt.Errorf("ref %s %s: only %s Service refs can be resolved", apiVersion, kind, servingv1.SchemeGroupVersion)
	}
	if s.Service(ns, name) == nil {
		return fmt.Errorf("Service %s/%s is not defined in config", ns, name)
	}
	return nil
}

// TriggerBroker is the name of the Broker a Trigger subscribes to.
func TriggerBroker(t *eventingv1.Trigger) string {
	if t.Spec.BrokerRef != nil {
		return t.Spec.BrokerRef.Name
	}
	return t.Spec.Broker
}

// ConfigMap returns the ConfigMap ns/name, or nil.
func (s *Set) ConfigMap(ns, name string) *corev1.ConfigMap {
	for _, cm := range s.ConfigMaps {
		if cm.Namespace == ns && cm.Name == name {
			return cm
		}
	}
	return nil
}

// Broker returns the Broker ns/name, or nil.
func (s *Set) Broker(ns, name string) *eventingv1.Broker {
	for _, b := range s.Brokers {
		if b.Namespace == ns && b.Name == name {
			return b
		}
	}
	return nil
}

// Service returns the Service ns/name, or nil.
func (s *Set) Service(ns, name string) *servingv1.Service {
	for _, svc := range s.Services {
		if svc.Namespace == ns && svc.Name == name {
			return svc
		}
	}
	return nil
}

// checkBinding checks what the runner can honour: Knative Services as the
// subject, a Broker of the set as the sink.
func (s *Set) checkBinding(sb *sourcesv1.SinkBinding) error {
	if subj := sb.Spec.Subject; subj.APIVersion != serviceGVK.GroupVersion().String() || subj.Kind != serviceGVK.Kind {
		return fmt.Errorf("subject %s %s: only Knative Services are bound", subj.APIVersion, subj.Kind)
	}
	ref := sb.Spec.Sink.Ref
	if ref == nil || ref.Kind != brokerGVK.Kind || ref.APIVersion != brokerGVK.GroupVersion().String() {
		return errors.New("sink: only a ref to a Broker is supported")
	}
	if s.Broker(refNamespace(ref.Namespace, sb.Namespace), ref.Name) == nil {
		return fmt.Errorf("sink: Broker %q is not defined in config", ref.Name)
	}
	return nil
}

// SinkFor is the Broker a SinkBinding of the set points svc's K_SINK at,
// as namespace and name; ok is false when none binds svc.
func (s *Set) SinkFor(svc *servingv1.Service) (ns, name string, ok bool) {
	for _, sb := range s.SinkBindings {
		subj := sb.Spec.Subject
		if sb.Namespace != svc.Namespace || subj.Kind != serviceGVK.Kind {
			continue
		}
		match := subj.Name == svc.Name
		if subj.Selector != nil {
			sel, err := metav1.LabelSelectorAsSelector(subj.Selector)
			match = err == nil && sel.Matches(labels.Set(svc.Labels))
		}
		if match && sb.Spec.Sink.Ref != nil {
			return refNamespace(sb.Spec.Sink.Ref.Namespace, sb.Namespace), sb.Spec.Sink.Ref.Name, true
		}
	}
	return "", "", false
}
