GO      ?= go
BIN     ?= bin
ADDR    ?= 127.0.0.1:8080
DATA    ?= .koffeeshop/data
FUNCS   := take-order prepare-beverage notify

.PHONY: all build run test vet fmt-check bench clean

all: build

## build: compile the functions and the local runner into $(BIN)/
build:
	$(GO) build -o $(BIN)/ $(addprefix ./functions/,$(FUNCS))
	$(GO) build -o $(BIN)/koffeeshop ./local

## run: the whole coffee shop on this machine, with an embedded NATS JetStream
run: build
	./$(BIN)/koffeeshop -config config -bin-dir $(BIN) -addr $(ADDR) -data-dir $(DATA)

## test: formatting, vet, and every test with the race detector
test: fmt-check vet
	$(GO) test -race -count=1 -timeout 15m ./...

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
