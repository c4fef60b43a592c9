SHELL := /bin/bash
GO      ?= go
BIN     ?= bin
ADDR    ?= 127.0.0.1:8080
DATA    ?= .koffeeshop/data
FUNCS   := take-order prepare-beverage notify
# The processes of the KoffeeshopJetStream Broker class, which config/ deploys
# (ko:// images of its Deployments): the controller, the ingress, the dispatcher.
CLASS_CMDS := broker/cmd/controller broker/cmd/ingress triggers/cmd/dispatcher

# make fuzz runs each target for a fixed count of inputs, about a minute
# each on 2 cores: a count has no wall-clock deadline, which Go 1.26's fuzzing
# coordinator races at the end of a -fuzztime duration, failing with a bare
# "context deadline exceeded" and no input (go.dev/issue/75804, fixed in Go
# 1.27). FUZZTIME (a duration or a count) overrides them all.
FUZZTIME ?=
fuzztime = $(if $(FUZZTIME),$(FUZZTIME),$(1))
# Test artifacts (the board's screenshot) land under $(ARTIFACTS)/_artifacts.
ARTIFACTS ?= $(CURDIR)/.artifacts

.PHONY: all build run test test-faults vet fmt-check fuzz bench clean kube-apiserver e2e-kind etcd

all: build

# GOBUILD builds with ko's flags (-trimpath, no cgo), as local/gobuild
# does for the runner and the tests: one compile of the dependencies then
# serves make build, make test and make images.
GOBUILD = CGO_ENABLED=0 $(GO) build -trimpath

# go_build_progress runs go build -v, which names each package it
# compiles, and says how far it is at least every 5 seconds; go's errors go
# through. $(1) names the step, $(2) the packages, $(3) go build's flags.
# The ticker's sleep holds none of make's output: a recipe's reader is not
# kept waiting for it once the build is done.
define go_build_progress
	@total=$$(CGO_ENABLED=0 $(GO) list -deps $(2) 2>/dev/null | wc -l); log=$$(mktemp); \
	echo "build $(1): $(2), $$total packages with their dependencies (a cold cache compiles them once: minutes on 2 cores)" >&2; \
	( while sleep 5 </dev/null >/dev/null 2>&1; do echo "  build $(1): $$(grep -c '^[[:alnum:]._/~-]*$$' $$log) of at most $$total packages compiled, now $$(tail -n1 $$log)" >&2; done ) & tick=$$!; \
	trap 'kill $$tick 2>/dev/null; rm -f $$log' EXIT INT TERM; \
	$(GOBUILD) -v $(3) $(2) 2>&1 | tee $$log | grep -v '^[[:alnum:]._/~-]*$$' >&2; rc=$${PIPESTATUS[0]}; \
	kill $$tick 2>/dev/null; wait $$tick 2>/dev/null; \
	n=$$(grep -c '^[[:alnum:]._/~-]*$$' $$log); rm -f $$log; \
	if [ $$rc -eq 0 ]; then echo "  build $(1): done ($$n packages compiled, the rest from the cache)" >&2; fi; exit $$rc
endef

## build: compile the functions and the local runner into $(BIN)/, saying
## how far it is
build:
	$(call go_build_progress,functions,$(addprefix ./functions/,$(FUNCS)),-o $(BIN)/)
	$(call go_build_progress,runner,./local,-o $(BIN)/koffeeshop)

## run: the whole coffee shop on this machine, with an embedded NATS JetStream
run: build
	$(abspath $(BIN))/koffeeshop -config config -bin-dir $(BIN) -addr $(ADDR) -data-dir $(DATA)

## test: formatting, every test with the race detector and all vet checks
## (the cluster tests on a real kube-apiserver and etcd among them, and
## every fuzz target's seed corpus), then the fault tests. Fuzzing for time
## is make fuzz's (README: Development).
test: fmt-check kube-apiserver etcd
	@mkdir -p $(ARTIFACTS)
	KUBE_APISERVER=$(abspath $(KUBE_APISERVER)) KOFFEESHOP_REQUIRE_APISERVER=$$(command -v etcd >/dev/null && echo 1) \
		$(GO) test -race -vet=all -count=1 -timeout 20m -artifacts -outputdir $(ARTIFACTS) ./...
	$(MAKE) --no-print-directory test-faults

## test-faults: the fault tests (kill -9 of the runner, nats-server restart,
## losing a node of a three-node JetStream cluster, misbehaving subscribers,
## a bounded soak), each printing a RESULT line of what was lost (0)
test-faults:
	$(GO) test -race -tags faults -count=1 -v -timeout 30m -run 'Fault|Cluster|Soak' ./local/runner 2>&1 | \
		grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok )|RESULT|faults?_test|cluster_test|soak_test' ; exit $${PIPESTATUS[0]}

## fuzz: fuzz each target for a fixed count of inputs (FUZZTIME overrides)
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzIngress$$' -fuzztime $(call fuzztime,120000x) ./broker
	$(GO) test -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(call fuzztime,120000x) ./broker/ceheader
	$(GO) test -run '^$$' -fuzz '^FuzzAcceptedEventRoundTrip$$' -fuzztime $(call fuzztime,18000x) ./triggers
	$(GO) test -run '^$$' -fuzz '^FuzzFilter$$' -fuzztime $(call fuzztime,24000x) ./triggers
	$(GO) test -run '^$$' -fuzz '^FuzzParseReply$$' -fuzztime $(call fuzztime,36000x) ./triggers

## kube-apiserver: build kube-apiserver from k8s.io/kubernetes (its own
## module, .ci/kube-apiserver) into $(BIN)/, once: about 6 minutes on 2 cores
KUBE_APISERVER ?= $(BIN)/kube-apiserver
kube-apiserver: $(KUBE_APISERVER)
$(KUBE_APISERVER): .ci/kube-apiserver/go.mod .ci/kube-apiserver/go.sum
	@echo "building kube-apiserver (k8s.io/kubernetes $$(sed -n 's/^require k8s.io\/kubernetes //p' .ci/kube-apiserver/go.mod)) into $(BIN)/; the first time takes minutes" >&2
	cd .ci/kube-apiserver && $(GO) build -o $(abspath $@) k8s.io/kubernetes/cmd/kube-apiserver

## etcd: Debian's etcd-server under the cluster tests' kube-apiserver,
## installed when missing and apt-get can (as root); without it those tests
## skip, saying so (with it, make test requires them)
etcd:
	@command -v etcd >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's etcd-server for the cluster tests" >&2; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; } || \
				echo "could not install etcd-server: the cluster tests will skip" >&2; \
		else echo "no etcd: the cluster tests will skip (install Debian's etcd-server)" >&2; fi; }

## e2e-kind: the cluster path on kind with Knative (needs Docker, kubectl
## and the internet; it cannot run on the machines make test runs on)
e2e-kind:
	bash .ci/e2e-kind

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## bench: Go benchmarks, each against a baseline measured in the same run
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2000x -count 3 ./broker/...
	$(GO) test -run '^$$' -bench . -benchtime 1x ./local/runner
	$(GO) run ./local/bench -out bench/results.json

clean:
	rm -rf $(BIN) .koffeeshop $(ARTIFACTS)

# ---- Knative: images and deploy (docs/deploy.md) ----

.PHONY: ko images deploy deploy-dry-run

KO_VERSION     ?= v0.19.1
KO             := $(BIN)/ko
KOCACHE        ?= $(abspath $(BIN)/kocache)
KO_DOCKER_REPO ?= kind.local
KO_PLATFORM    ?= linux/$(shell $(GO) env GOARCH)
IMAGES         ?= $(BIN)/images
# Where offline builds name their images: kind.local and ko.local would make
# ko load into kind or a Docker engine, so those fall back to dev.local.
DRY_RUN_REPO   ?= $(if $(filter kind.local% ko.local%,$(KO_DOCKER_REPO)),dev.local/koffeeshop,$(KO_DOCKER_REPO))

# ko with the koffeeshop base image (local/cmd/kobase), served from $(KOCACHE):
# no registry is contacted for it.
KO_RUN = base=$$($(GO) run ./local/cmd/kobase -kocache $(KOCACHE)) && \
	KOCACHE=$(KOCACHE) KO_DEFAULTBASEIMAGE=$$base

## ko: install ko $(KO_VERSION) into $(BIN)/ with go install, unless it is there
ko:
	@if [ "$$($(KO) version 2>/dev/null)" != "$(KO_VERSION)" ]; then \
		echo "go install github.com/google/ko@$(KO_VERSION) into $(BIN)/" >&2; \
		GOBIN=$(abspath $(BIN)) $(GO) install github.com/google/ko@$(KO_VERSION); \
	fi

## images: build every image config/ names (the functions and the Broker
## class's controller, ingress and dispatcher) offline into the OCI layout
## $(IMAGES)/ (ko names the layout like a repository: keep the path lower case)
images: ko
	@rm -rf $(IMAGES)
	@$(KO_RUN) KO_DOCKER_REPO=$(DRY_RUN_REPO) $(KO) build --push=false \
		--platform=$(KO_PLATFORM) --oci-layout-path $(IMAGES) \
		$(addprefix ./functions/,$(FUNCS)) $(addprefix ./,$(CLASS_CMDS))

## deploy-dry-run: print config/ as `make deploy` applies it, images resolved
## to digests; needs no cluster and pushes nothing
deploy-dry-run: ko
	@$(KO_RUN) KO_DOCKER_REPO=$(DRY_RUN_REPO) $(KO) resolve --push=false \
		--platform=$(KO_PLATFORM) -f config/

## deploy: build the images, publish them to $(KO_DOCKER_REPO) and apply
## config/ to the current kube context
deploy: ko
	@ctx=$$(kubectl config current-context) || { \
		echo "deploy: no current kube context; see docs/deploy.md" >&2; exit 1; }; \
		echo "deploying config/ to kube context $$ctx, images to $(KO_DOCKER_REPO)" >&2
	@$(KO_RUN) KO_DOCKER_REPO=$(KO_DOCKER_REPO) $(KO) apply \
		--platform=$(KO_PLATFORM) -f config/
