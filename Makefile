# Developer entry points. `make run` needs the Rust toolchain and a C compiler
# (Debian packages make, gcc, libc6-dev: cc links, jemalloc and ring build C);
# `make test` installs what the tests need first (scripts/setup-test-deps.sh).

CARGO ?= cargo
NPM   ?= npm
PORT  ?= 4000
# Seconds per fuzz target: `make fuzz`, and the smoke of `make test`.
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 5

# The seeds example binary that the phoenix.js compatibility suite drives.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
SEEDS_BIN  ?= $(TARGET_DIR)/debug/examples/seeds

.PHONY: run run-seeds build test test-deps test-rust test-compat test-e2e test-image lint lint-k8s image image-check bench curves memory bench-ab bench-history bench-backends bench-redis chaos soak test-fuzz fuzz

## run: the gateway on 127.0.0.1:$(PORT) with config/example.toml and the demo
## chat at /; the in-memory broker unless REDIS_URL is set
run:
	PORT=$(PORT) $(CARGO) run -p gateway --bin gateway -- --config config/example.toml

## run-seeds: the seed channels of the Rust example on 127.0.0.1:$(PORT)
run-seeds:
	PORT=$(PORT) $(CARGO) run -p gateway --example seeds

## build: build every crate, test and example
build:
	$(CARGO) build --workspace --all-targets

## test: install missing test dependencies, then run every test (the quick
## manifest and image checks first, so they fail fast)
test:
	$(MAKE) --no-print-directory test-deps
	$(MAKE) --no-print-directory lint-k8s
	$(MAKE) --no-print-directory test-image
	$(MAKE) --no-print-directory test-rust
	$(MAKE) --no-print-directory test-fuzz
	$(MAKE) --no-print-directory test-compat
	$(MAKE) --no-print-directory test-e2e

test-deps:
	bash scripts/setup-test-deps.sh

test-rust:
	$(CARGO) test --workspace

# A smoke of every fuzz target (docs/fuzzing.md): its committed seeds, then
# FUZZ_SMOKE_SECONDS of fuzzing; an unoptimized build without sanitizer, the
# quickest to build. Needs nightly and cargo-fuzz (make test-deps).
test-fuzz:
	FUZZ_FLAGS="--dev --sanitizer none" bash scripts/fuzz.sh $(FUZZ_SMOKE_SECONDS)

## fuzz: every cargo-fuzz target of fuzz/ for FUZZ_SECONDS (60) each, one after
## another; prints execs, execs/s, corpus size and findings (docs/fuzzing.md)
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# The official phoenix npm client against the seeds example, and against
# three gateway pods and Redis: presence, and long-poll behind nginx.
ifneq ($(wildcard compat/package.json),)
test-compat:
	$(CARGO) build -p gateway --example seeds --bin gateway
	$(NPM) --prefix compat $(if $(wildcard compat/package-lock.json),ci,install) --no-audit --no-fund
	$(NPM) --prefix examples/backends ci --no-audit --no-fund
	GATEWAY_SEEDS_BIN=$(SEEDS_BIN) GATEWAY_BIN=$(TARGET_DIR)/debug/gateway $(NPM) --prefix compat test
else
test-compat:
	@echo "make test-compat: SKIPPED: compat/package.json does not exist yet, so the phoenix.js compatibility suite was not run"
endif

# The demo page in headless Chromium (Debian's), driven by playwright-core.
test-e2e:
	$(CARGO) build -p gateway --bin gateway
	$(NPM) --prefix e2e ci --no-audit --no-fund
	GATEWAY_BIN=$(TARGET_DIR)/debug/gateway $(NPM) --prefix e2e test

# The checks of scripts/image-check.sh on the debug binary, which links the
# same libraries as the release binary the image copies (make image-check).
test-image:
	$(CARGO) build -p gateway --bin gateway
	bash scripts/image-check.sh $(TARGET_DIR)/debug/gateway

## lint: formatting, clippy (warnings as errors), the layer order of
## gateway/src against docs/architecture.md, and lint-k8s
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test -p gateway --test architecture
	$(MAKE) --no-print-directory lint-k8s

## lint-k8s: render every k8s/ overlay with kustomize and validate it offline
## (Kubernetes schemas, yamllint, promtool, dashboard metric names, gateway
## --check of the configs); installs its tools when missing (docs/deploy.md)
lint-k8s:
	$(CARGO) build -p gateway --bin gateway
	GATEWAY_BIN=$(TARGET_DIR)/debug/gateway bash scripts/k8s-lint.sh

IMAGE ?= gateway:dev

## image: the container image $(IMAGE) from the Dockerfile (needs a Docker
## engine; none runs on the development machines)
image:
	docker build -t $(IMAGE) .

## image-check: build the release binary the image copies and test it without
## Docker: its libraries, its config, a start, /readyz and SIGTERM
image-check:
	bash scripts/image-check.sh

## bench: a short fixed set of loadtest scenarios against a release gateway and
## redis-server; JSON and HTML results under bench/results/ (BENCH_DURATION=10s);
## then the soak (SOAK_SECONDS, an hour by default)
bench:
	bash loadtest/bench.sh
	$(MAKE) --no-print-directory soak

SOAK_SECONDS ?= 3600

## chaos: fan-out over 3 release pods on Redis while Redis is killed, stopped,
## a pod is killed, a pod's Redis link is cut, a Cluster master fails over;
## figures under bench/results/chaos/ (docs/reliability.md; about 12 minutes)
chaos:
	$(CARGO) build --release -p gateway --bin gateway
	$(CARGO) build --release -p chaos --bin chaos
	$(TARGET_DIR)/release/chaos scenarios $(CHAOS_ARGS)

## soak: the same fan-out for SOAK_SECONDS with connection churn: memory,
## descriptors and latency per minute (docs/reliability.md)
soak:
	$(CARGO) build --release -p gateway --bin gateway
	$(CARGO) build --release -p chaos --bin chaos
	SOAK_SECONDS=$(SOAK_SECONDS) $(TARGET_DIR)/release/chaos soak $(SOAK_ARGS)

## curves: the scaling curves of docs/performance.md (memory vs connections,
## fan-out vs subscribers and publish rate, 1-3 pods) as SVG under bench/results/;
## CURVES_DOCS=docs/perf also refreshes the committed charts (about 15 minutes)
curves:
	bash loadtest/curves.sh

## memory: resident memory per idle joined connection on config/example.toml
## (19,000 connections: one topic, with presence tracked, 10 topics each)
memory:
	bash loadtest/memory.sh

## bench-ab: the same fan-out run against two gateway binaries, alternated
## (make bench-ab A=old/gateway B=target/release/gateway); what a change costs
bench-ab:
	bash loadtest/ab.sh $(A) $(B)

## bench-history: fan-out with history on vs off side by side and 10,000
## clients recovering after a pod restart, HISTORY_ROUNDS rounds (about 3 min
## each); docs/performance.md#history
bench-history:
	bash loadtest/history.sh

## bench-backends: client push -> backend -> reply round trips through a Redis
## stream worker, an HTTP hook and a plain broadcast, at 1,000 and 10,000
## pushes/s, and join hook overhead, BACKENDS_ROUNDS (3) rounds (about 4 min
## each); docs/performance.md#backends
bench-backends:
	bash loadtest/backends.sh

## bench-redis: what Redis holds and spends for the gateway on config/example.toml:
## memory and connections per idle pod, memory per topic, pod-topic, present
## user and kept history message, Redis CPU per join, leave and message
## (PUBLISH vs FCALL); its own redis-server (about 5 min); docs/redis.md#sizing
bench-redis:
	bash loadtest/redis_sizing.sh
