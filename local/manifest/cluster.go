package manifest

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// ClusterObjects are the Kubernetes objects of config/ that only a cluster
// uses: the control and data plane of the KoffeeshopJetStream Broker class
// (its Namespace, ServiceAccounts, RBAC, Deployments and Services). Each is
// decoded strictly into its k8s.io/api type, so a misspelt field is an
// error, and checked for what the API server would refuse; the local
// runner runs none of them.
type ClusterObjects struct {
	Namespaces          []*corev1.Namespace
	ServiceAccounts     []*corev1.ServiceAccount
	ClusterRoles        []*rbacv1.ClusterRole
	ClusterRoleBindings []*rbacv1.ClusterRoleBinding
	Roles               []*rbacv1.Role
	RoleBindings        []*rbacv1.RoleBinding
	Deployments         []*appsv1.Deployment
	// Services are Kubernetes (core v1) Services; Knative Services are
	// Set.Services.
	Services []*corev1.Service
}

var (
	namespaceGVK          = corev1.SchemeGroupVersion.WithKind("Namespace")
	serviceAccountGVK     = corev1.SchemeGroupVersion.WithKind("ServiceAccount")
	coreServiceGVK        = corev1.SchemeGroupVersion.WithKind("Service")
	clusterRoleGVK        = rbacv1.SchemeGroupVersion.WithKind("ClusterRole")
	clusterRoleBindingGVK = rbacv1.SchemeGroupVersion.WithKind("ClusterRoleBinding")
	roleGVK               = rbacv1.SchemeGroupVersion.WithKind("Role")
	roleBindingGVK        = rbacv1.SchemeGroupVersion.WithKind("RoleBinding")
	deploymentGVK         = appsv1.SchemeGroupVersion.WithKind("Deployment")
)

// add decodes raw when gvk is one of the cluster kinds, and reports
// whether it was.
func (c *ClusterObjects) add(gvk schema.GroupVersionKind, raw []byte) (bool, error) {
	var err error
	switch gvk {
	case namespaceGVK:
		err = decodeInto(raw, &c.Namespaces)
	case serviceAccountGVK:
		err = decodeInto(raw, &c.ServiceAccounts)
	case coreServiceGVK:
		err = decodeInto(raw, &c.Services)
	case clusterRoleGVK:
		err = decodeInto(raw, &c.ClusterRoles)
	case clusterRoleBindingGVK:
		err = decodeInto(raw, &c.ClusterRoleBindings)
	case roleGVK:
		err = decodeInto(raw, &c.Roles)
	case roleBindingGVK:
		err = decodeInto(raw, &c.RoleBindings)
	case deploymentGVK:
		err = decodeInto(raw, &c.Deployments)
	default:
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("%s: %w", gvk.Kind, err)
	}
	return true, nil
}

// decodeInto decodes raw strictly (unknown and duplicate fields are
// errors) into a new T and appends it to list.
func decodeInto[T any](raw []byte, list *[]*T) error {
	obj := new(T)
	if err := yaml.UnmarshalStrict(raw, obj); err != nil {
		return err
	}
	*list = append(*list, obj)
	return nil
}

// finish defaults the namespace of namespaced objects and validates each
// object on its own. References between them (a Deployment's
// ServiceAccount, a binding's Role) are not checked here: on a cluster
// they may be made elsewhere.
func (c *ClusterObjects) finish() []error {
	var errs []error
	check := func(kind string, meta *metav1.ObjectMeta, namespaced bool, list field.ErrorList) {
		if len(list) == 0 {
			return
		}
		name := meta.Name
		if namespaced {
			name = meta.Namespace + "/" + name
		}
		errs = append(errs, fmt.Errorf("%s %s: %w", kind, name, list.ToAggregate()))
	}
	for _, ns := range c.Namespaces {
		check("Namespace", &ns.ObjectMeta, false, validateMeta(&ns.ObjectMeta, false, apivalidation.NameIsDNSLabel))
	}
	for _, sa := range c.ServiceAccounts {
		defaultNamespace(&sa.Namespace)
		check("ServiceAccount", &sa.ObjectMeta, true, validateMeta(&sa.ObjectMeta, true, apivalidation.NameIsDNSSubdomain))
	}
	for _, r := range c.ClusterRoles {
		list := validateMeta(&r.ObjectMeta, false, path.ValidatePathSegmentName)
		list = append(list, validateRules(r.Rules, false, field.NewPath("rules"))...)
		check("ClusterRole", &r.ObjectMeta, false, list)
	}
	for _, r := range c.Roles {
		defaultNamespace(&r.Namespace)
		list := validateMeta(&r.ObjectMeta, true, path.ValidatePathSegmentName)
		list = append(list, validateRules(r.Rules, true, field.NewPath("rules"))...)
		check("Role", &r.ObjectMeta, true, list)
	}
	for _, b := range c.ClusterRoleBindings {
		list := validateMeta(&b.ObjectMeta, false, path.ValidatePathSegmentName)
		list = append(list, validateBinding(b.RoleRef, b.Subjects, false)...)
		check("ClusterRoleBinding", &b.ObjectMeta, false, list)
	}
	for _, b := range c.RoleBindings {
		defaultNamespace(&b.Namespace)
		list := validateMeta(&b.ObjectMeta, true, path.ValidatePathSegmentName)
		list = append(list, validateBinding(b.RoleRef, b.Subjects, true)...)
		check("RoleBinding", &b.ObjectMeta, true, list)
	}
	for _, d := range c.Deployments {
		defaultNamespace(&d.Namespace)
		list := validateMeta(&d.ObjectMeta, true, apivalidation.NameIsDNSSubdomain)
		list = append(list, validateDeployment(d)...)
		check("Deployment", &d.ObjectMeta, true, list)
	}
	for _, svc := range c.Services {
		defaultNamespace(&svc.Namespace)
		list := validateMeta(&svc.ObjectMeta, true, apivalidation.NameIsDNS1035Label)
		list = append(list, validateService(svc)...)
		check("Service", &svc.ObjectMeta, true, list)
	}
	return errs
}

// checkUnique reports objects of one kind defined twice.
func (c *ClusterObjects) checkUnique(check func(kind, ns, name string)) {
	for _, o := range c.Namespaces {
		check("Namespace", "", o.Name)
	}
	for _, o := range c.ServiceAccounts {
		check("ServiceAccount", o.Namespace, o.Name)
	}
	for _, o := range c.ClusterRoles {
		check("ClusterRole", "", o.Name)
	}
	for _, o := range c.ClusterRoleBindings {
		check("ClusterRoleBinding", "", o.Name)
	}
	for _, o := range c.Roles {
		check("Role", o.Namespace, o.Name)
	}
	for _, o := range c.RoleBindings {
		check("RoleBinding", o.Namespace, o.Name)
	}
	for _, o := range c.Deployments {
		check("Deployment", o.Namespace, o.Name)
	}
	for _, o := range c.Services {
		check("v1 Service", o.Namespace, o.Name)
	}
}

// validateMeta checks the name, the namespace (required for namespaced
// kinds, forbidden for cluster-scoped ones), labels and annotations, with
// the API machinery's own rules.
func validateMeta(meta *metav1.ObjectMeta, namespaced bool, name apivalidation.ValidateNameFunc) field.ErrorList {
	return apivalidation.ValidateObjectMeta(meta, namespaced, name, field.NewPath("metadata"))
}

// validateRules: every rule has verbs, and either resources in API groups
// or (for a ClusterRole) non-resource URLs, never both.
func validateRules(rules []rbacv1.PolicyRule, namespaced bool, fld *field.Path) field.ErrorList {
	var list field.ErrorList
	for i, r := range rules {
		p := fld.Index(i)
		if len(r.Verbs) == 0 {
			list = append(list, field.Required(p.Child("verbs"), "verbs must contain at least one value"))
		}
		switch {
		case len(r.NonResourceURLs) > 0 && namespaced:
			list = append(list, field.Invalid(p.Child("nonResourceURLs"), r.NonResourceURLs, "namespaced rules cannot apply to non-resource URLs"))
		case len(r.NonResourceURLs) > 0 && (len(r.APIGroups) > 0 || len(r.Resources) > 0):
			list = append(list, field.Invalid(p.Child("nonResourceURLs"), r.NonResourceURLs, "rules cannot apply to both regular resources and non-resource URLs"))
		case len(r.NonResourceURLs) == 0 && len(r.Resources) == 0:
			list = append(list, field.Required(p.Child("resources"), "resource rules must supply at least one resource"))
		case len(r.NonResourceURLs) == 0 && len(r.APIGroups) == 0:
			list = append(list, field.Required(p.Child("apiGroups"), "resource rules must supply at least one api group"))
		}
	}
	return list
}

// validateBinding: the roleRef names a Role (from a RoleBinding) or a
// ClusterRole in rbac.authorization.k8s.io, and each subject is a
// ServiceAccount (with a namespace, in a ClusterRoleBinding), a User or a
// Group.
func validateBinding(ref rbacv1.RoleRef, subjects []rbacv1.Subject, namespaced bool) field.ErrorList {
	var list field.ErrorList
	p := field.NewPath("roleRef")
	if ref.APIGroup != rbacv1.GroupName {
		list = append(list, field.NotSupported(p.Child("apiGroup"), ref.APIGroup, []string{rbacv1.GroupName}))
	}
	kinds := []string{"ClusterRole"}
	if namespaced {
		kinds = append(kinds, "Role")
	}
	if !sets.New(kinds...).Has(ref.Kind) {
		list = append(list, field.NotSupported(p.Child("kind"), ref.Kind, kinds))
	}
	if ref.Name == "" {
		list = append(list, field.Required(p.Child("name"), ""))
	} else {
		for _, msg := range path.ValidatePathSegmentName(ref.Name, false) {
			list = append(list, field.Invalid(p.Child("name"), ref.Name, msg))
		}
	}
	for i, s := range subjects {
		sp := field.NewPath("subjects").Index(i)
		switch s.Kind {
		case rbacv1.ServiceAccountKind:
			if s.APIGroup != "" {
				list = append(list, field.NotSupported(sp.Child("apiGroup"), s.APIGroup, []string{""}))
			}
			for _, msg := range apivalidation.NameIsDNSSubdomain(s.Name, false) {
				list = append(list, field.Invalid(sp.Child("name"), s.Name, msg))
			}
			if !namespaced && s.Namespace == "" {
				list = append(list, field.Required(sp.Child("namespace"), ""))
			}
		case rbacv1.UserKind, rbacv1.GroupKind:
			if s.APIGroup != rbacv1.GroupName {
				list = append(list, field.NotSupported(sp.Child("apiGroup"), s.APIGroup, []string{rbacv1.GroupName}))
			}
			if s.Name == "" {
				list = append(list, field.Required(sp.Child("name"), ""))
			}
		default:
			list = append(list, field.NotSupported(sp.Child("kind"), s.Kind, []string{rbacv1.ServiceAccountKind, rbacv1.UserKind, rbacv1.GroupKind}))
		}
	}
	return list
}

// validateDeployment: a selector that selects the template's pods, and a
// pod spec whose containers, ports, env, volumes and probes fit together.
func validateDeployment(d *appsv1.Deployment) field.ErrorList {
	var list field.ErrorList
	spec := field.NewPath("spec")
	if d.Spec.Replicas != nil && *d.Spec.Replicas < 0 {
		list = append(list, field.Invalid(spec.Child("replicas"), *d.Spec.Replicas, "must be 0 or more"))
	}
	sel := d.Spec.Selector
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		list = append(list, field.Required(spec.Child("selector"), "a Deployment needs a non-empty selector"))
	} else {
		list = append(list, metavalidation.ValidateLabelSelector(sel, metavalidation.LabelSelectorValidationOptions{}, spec.Child("selector"))...)
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			list = append(list, field.Invalid(spec.Child("selector"), sel, err.Error()))
		} else if !s.Matches(labels.Set(d.Spec.Template.Labels)) {
			list = append(list, field.Invalid(spec.Child("template", "metadata", "labels"), d.Spec.Template.Labels, "`selector` does not match template `labels`"))
		}
	}
	list = append(list, metavalidation.ValidateLabels(d.Spec.Template.Labels, spec.Child("template", "metadata", "labels"))...)
	list = append(list, validatePodSpec(&d.Spec.Template.Spec, spec.Child("template", "spec"))...)
	return list
}

func validatePodSpec(ps *corev1.PodSpec, fld *field.Path) field.ErrorList {
	var list field.ErrorList
	if ps.ServiceAccountName != "" {
		for _, msg := range apivalidation.NameIsDNSSubdomain(ps.ServiceAccountName, false) {
			list = append(list, field.Invalid(fld.Child("serviceAccountName"), ps.ServiceAccountName, msg))
		}
	}
	volumes := sets.New[string]()
	for i, v := range ps.Volumes {
		p := fld.Child("volumes").Index(i)
		for _, msg := range validation.IsDNS1123Label(v.Name) {
			list = append(list, field.Invalid(p.Child("name"), v.Name, msg))
		}
		if volumes.Has(v.Name) {
			list = append(list, field.Duplicate(p.Child("name"), v.Name))
		}
		volumes.Insert(v.Name)
		if n := volumeSources(v.VolumeSource); n != 1 {
			list = append(list, field.Invalid(p, v.Name, fmt.Sprintf("must have exactly one volume source, has %d", n)))
		}
	}
	if len(ps.Containers) == 0 {
		list = append(list, field.Required(fld.Child("containers"), ""))
	}
	names := sets.New[string]()
	for i := range ps.Containers {
		c := &ps.Containers[i]
		p := fld.Child("containers").Index(i)
		if names.Has(c.Name) {
			list = append(list, field.Duplicate(p.Child("name"), c.Name))
		}
		names.Insert(c.Name)
		list = append(list, validateContainer(c, volumes, p)...)
	}
	return list
}

// volumeSources counts the sources a volume names; the API server wants
// exactly one. Only the kinds config/ may use are counted, so any other
// makes the count 0 and is reported.
func volumeSources(v corev1.VolumeSource) int {
	n := 0
	for _, set := range []bool{v.Secret != nil, v.ConfigMap != nil, v.EmptyDir != nil, v.Projected != nil, v.DownwardAPI != nil} {
		if set {
			n++
		}
	}
	return n
}

func validateContainer(c *corev1.Container, volumes sets.Set[string], fld *field.Path) field.ErrorList {
	var list field.ErrorList
	for _, msg := range validation.IsDNS1123Label(c.Name) {
		list = append(list, field.Invalid(fld.Child("name"), c.Name, msg))
	}
	if strings.TrimSpace(c.Image) == "" {
		list = append(list, field.Required(fld.Child("image"), ""))
	}
	ports := sets.New[string]()
	for i, port := range c.Ports {
		p := fld.Child("ports").Index(i)
		for _, msg := range validation.IsValidPortNum(int(port.ContainerPort)) {
			list = append(list, field.Invalid(p.Child("containerPort"), port.ContainerPort, msg))
		}
		if port.Name != "" {
			for _, msg := range validation.IsValidPortName(port.Name) {
				list = append(list, field.Invalid(p.Child("name"), port.Name, msg))
			}
			if ports.Has(port.Name) {
				list = append(list, field.Duplicate(p.Child("name"), port.Name))
			}
			ports.Insert(port.Name)
		}
	}
	for i, e := range c.Env {
		p := fld.Child("env").Index(i)
		for _, msg := range validation.IsEnvVarName(e.Name) {
			list = append(list, field.Invalid(p.Child("name"), e.Name, msg))
		}
		if e.ValueFrom != nil {
			if e.Value != "" {
				list = append(list, field.Invalid(p.Child("valueFrom"), "", "may not be specified when `value` is not empty"))
			}
			if n := envSources(e.ValueFrom); n != 1 {
				list = append(list, field.Invalid(p.Child("valueFrom"), "", fmt.Sprintf("must have exactly one source, has %d", n)))
			}
		}
	}
	for i, m := range c.VolumeMounts {
		p := fld.Child("volumeMounts").Index(i)
		if !volumes.Has(m.Name) {
			list = append(list, field.NotFound(p.Child("name"), m.Name))
		}
		if !strings.HasPrefix(m.MountPath, "/") {
			list = append(list, field.Invalid(p.Child("mountPath"), m.MountPath, "must be an absolute path"))
		}
	}
	probes := []struct {
		name  string
		probe *corev1.Probe
	}{{"readinessProbe", c.ReadinessProbe}, {"livenessProbe", c.LivenessProbe}, {"startupProbe", c.StartupProbe}}
	for _, pr := range probes {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			continue
		}
		p := fld.Child(pr.name, "httpGet", "port")
		// The API server only checks the form of a named port; the
		// kubelet fails the probe when the container has no such port.
		if port := pr.probe.HTTPGet.Port; port.Type == intstr.String && !ports.Has(port.StrVal) {
			list = append(list, field.NotFound(p, port.StrVal))
		} else if port.Type == intstr.Int {
			for _, msg := range validation.IsValidPortNum(port.IntValue()) {
				list = append(list, field.Invalid(p, port.IntVal, msg))
			}
		}
	}
	return list
}

func envSources(v *corev1.EnvVarSource) int {
	n := 0
	for _, set := range []bool{v.FieldRef != nil, v.ResourceFieldRef != nil, v.ConfigMapKeyRef != nil, v.SecretKeyRef != nil, v.FileKeyRef != nil} {
		if set {
			n++
		}
	}
	return n
}

// validateService: a ClusterIP Service (the only type config/ uses) with
// ports in range, named when there are several, and a valid target port.
func validateService(svc *corev1.Service) field.ErrorList {
	var list field.ErrorList
	spec := field.NewPath("spec")
	if t := svc.Spec.Type; t != "" && t != corev1.ServiceTypeClusterIP {
		list = append(list, field.NotSupported(spec.Child("type"), t, []string{string(corev1.ServiceTypeClusterIP)}))
	}
	if len(svc.Spec.Ports) == 0 {
		list = append(list, field.Required(spec.Child("ports"), ""))
	}
	names := sets.New[string]()
	for i, port := range svc.Spec.Ports {
		p := spec.Child("ports").Index(i)
		if len(svc.Spec.Ports) > 1 && port.Name == "" {
			list = append(list, field.Required(p.Child("name"), "a Service with several ports names each"))
		}
		if names.Has(port.Name) {
			list = append(list, field.Duplicate(p.Child("name"), port.Name))
		}
		names.Insert(port.Name)
		for _, msg := range validation.IsValidPortNum(int(port.Port)) {
			list = append(list, field.Invalid(p.Child("port"), port.Port, msg))
		}
		switch tp := port.TargetPort; {
		case tp.Type == intstr.String && tp.StrVal != "":
			for _, msg := range validation.IsValidPortName(tp.StrVal) {
				list = append(list, field.Invalid(p.Child("targetPort"), tp.StrVal, msg))
			}
		case tp.Type == intstr.Int && tp.IntVal != 0:
			for _, msg := range validation.IsValidPortNum(tp.IntValue()) {
				list = append(list, field.Invalid(p.Child("targetPort"), tp.IntVal, msg))
			}
		}
	}
	return list
}

// validateConfigMap checks a ConfigMap's name and keys.
func validateConfigMap(cm *corev1.ConfigMap) error {
	list := validateMeta(&cm.ObjectMeta, true, apivalidation.NameIsDNSSubdomain)
	for k := range cm.Data {
		for _, msg := range validation.IsConfigMapKey(k) {
			list = append(list, field.Invalid(field.NewPath("data").Key(k), k, msg))
		}
	}
	if len(list) == 0 {
		return nil
	}
	return fmt.Errorf("ConfigMap %s/%s: %w", cm.Namespace, cm.Name, list.ToAggregate())
}
