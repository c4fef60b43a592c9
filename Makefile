GO      ?= go
BIN     ?= bin
ADDR    ?= 127.0.0.1:8080
DATA    ?= .koffeeshop/data
FUNCS   := take-order prepare-beverage notify

FUZZTIME ?= 10s

.PHONY: all build run test vet fmt-check fuzz bench clean

all: build

## build: compile the functions and the local runner into $(BIN)/
build:
	$(GO) build -o $(BIN)/ $(addprefix ./functions/,$(FUNCS))
	$(GO) build -o $(BIN)/koffeeshop ./local

## run: the whole coffee shop on this machine, with an embedded NATS JetStream
run: build
	./$(BIN)/koffeeshop -config config -bin-dir $(BIN) -addr $(ADDR) -data-dir $(DATA)

## test: formatting, every test with the race detector and all vet checks,
## then each fuzz target for $(FUZZTIME)
test: fmt-check
	$(GO) test -race -vet=all -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory fuzz

## fuzz: run each fuzz target for a bounded time
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzIngress$$' -fuzztime $(FUZZTIME) ./broker
	$(GO) test -run '^$$' -fuzz '^FuzzFilter$$' -fuzztime $(FUZZTIME) ./triggers
	$(GO) test -run '^$$' -fuzz '^FuzzParseReply$$' -fuzztime $(FUZZTIME) ./triggers

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## bench: Go benchmarks, each against a baseline measured in the same run
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2000x -count 3 ./broker/...

clean:
	rm -rf $(BIN) .koffeeshop
