//go:build tools

// Package tools pins kube-apiserver, built from k8s.io/kubernetes for the
// cluster tests: `make kube-apiserver` builds it into bin/. It is a module
// of its own so that none of Kubernetes reaches koffeeshop's go.mod.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
