# foodpipe: one entry point for people and CI.
#
#   make up      start PostgreSQL and a Kafka-protocol broker (idempotent)
#   make down    stop the broker that `make up` started
#   make demo    up, produce a few thousand orders, consume, print a summary
#   make test    up, then fmt, clippy, unused dependencies, compose + Dockerfile lint, the no-C
#                and static builds, deploy-check, tour-check, readme-check, and every test
#   make deploy-check  validate deploy/ (Kubernetes manifests, the systemd unit)
#   make tour-check    run every command of docs/tour.md and compare its output
#   make readme-check  the same for README.md (names of its own, written back as the
#                      defaults), then every relative link of README, ARCHITECTURE, docs/
#   make static  one statically linked binary (glibc, crt-static), no C compiled
#   make musl    one static musl binary, as the Dockerfile builds it
#   make test-rskafka   the vendored, patched rskafka's own unit tests
#   make promtool       the Prometheus alerting rules' unit tests (promtool)
#   make bench   every headline figure in one run, foodpipe beside librdkafka
#                and psql \copy on fresh private Tansu brokers (sqlite and
#                memory://), a broker-free fold of captured fetch answers and a
#                BENCH_BACKLOG-event growth run: target/bench/report.md and
#                report.json (never part of make test)
#   make chaos   a seeded fault storm (CHAOS_SEED, CHAOS_FAULTS) on three private Tansu brokers
#                and the local PostgreSQL, then an independent librdkafka fold check
#                (about 10 minutes; never part of make test)
#   make bench-micro     the criterion benchmarks (partitioner, decoding)
#   make bench-produce   foodpipe's producer vs librdkafka, same fresh broker and
#                        events, per codec (BENCH_CODECS=none,lz4,zstd)
#   make bench-sink      foodpipe's fold vs psql \copy of the same rows
#   make bench-projections  the fold with every projection vs orders + history
#                        alone; a new projection filled from history; asof of one
#   make bench-memory    peak RSS of consume with a 100k and a 1M backlog
#   make bench-partitions  three members on 6/100/400/1000 partitions: time to
#                        owned and lag 0; events/s by partition count
#   make bench-rebuild   `rebuild` (bulk fill) vs the live fold of the same
#                        REBUILD_EVENTS events on a private Tansu: events/s, ratio

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
DEMO_EVENTS ?= 5000
FOODPIPE := ./target/release/foodpipe

.PHONY: help up down build static musl demo test test-rskafka promtool lint no-c deploy-check tour-check readme-check bench chaos bench-micro bench-produce bench-sink bench-projections bench-memory bench-partitions bench-rebuild clean

help:
	@sed -n 's/^#   //p' Makefile

up:
	@scripts/stack-up.sh

down:
	@scripts/stack-down.sh

build:
	$(CARGO) build --release --bin foodpipe

# A static binary of the glibc target: this machine's toolchain, nothing to
# install. CC=false: the build may not compile C. RUSTFLAGS reach only the
# target artifacts because --target is explicit (build scripts stay dynamic).
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_BIN := target/$(STATIC_TARGET)/release/foodpipe
static:
	CC=false CXX=false RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release --locked --bin foodpipe --target $(STATIC_TARGET)
	@file -L $(STATIC_BIN)
	@ls -l $(STATIC_BIN)

# The musl target links statically by default (rustup ships musl's libc.a).
MUSL_TARGET ?= x86_64-unknown-linux-musl
musl:
	rustup target add $(MUSL_TARGET)
	CC=false CXX=false $(CARGO) build --release --locked --bin foodpipe --target $(MUSL_TARGET)
	@file -L target/$(MUSL_TARGET)/release/foodpipe
	@ls -l target/$(MUSL_TARGET)/release/foodpipe

demo: up build
	$(FOODPIPE) produce --count $(DEMO_EVENTS) --partitions 3
	$(FOODPIPE) consume --until-caught-up --projections projections
	$(FOODPIPE) status
	$(FOODPIPE) projection list
	@# The generated events start now and run about an hour and a half
	@# ahead: restaurant_daily as it was 30 minutes into the stream.
	$(FOODPIPE) asof "$$(date -u -d '+30 min' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v+30M +%Y-%m-%dT%H:%M:%SZ)" --projection restaurant_daily

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile kraft config -q
	docker-compose -f docker-compose.yml --profile cluster config -q
	.stack/venv/bin/hadolint Dockerfile
	@# Dependencies no code uses (cargo-machete, installed by make up).
	.stack/cargo/bin/cargo-machete --skip-target-dir

# The default build compiles no C: with CC=false any crate that tries fails
# the build, and no -sys crate may appear among normal or build dependencies.
# (criterion, a dev-dependency for benchmarks only, does compile a C shim.)
# One exception, by name only: linux-raw-sys (under rustix, under crossterm,
# which `watch` draws with) is Linux's syscall numbers and structs as plain
# Rust, with no build script and no library to link (`build = false`, no
# `links`), so it neither compiles nor links C.
no-c:
	CC=false CXX=false $(CARGO) build --workspace
	@if $(CARGO) tree --workspace -e normal,build --prefix none | grep -E -- '-sys( |$$)' \
		| grep -v -E '^linux-raw-sys '; then \
		echo "error: a -sys crate is in the default build" >&2; exit 1; fi

test: up lint no-c static musl test-rskafka promtool deploy-check tour-check readme-check
	$(CARGO) test --workspace
	@echo "== the opt-in tls and sasl features, against real peers"
	$(CARGO) clippy --workspace --all-targets --features tls,sasl -- -D warnings
	$(CARGO) test -p kafka --features tls --lib
	$(CARGO) test --features tls,sasl --test it security

test-rskafka:
	scripts/test_vendored_rskafka.sh

# deploy/prometheus/alerts.yml checked and unit-tested (alerts_test.yml: for
# each rule, series that fire it and series that must not) by promtool from
# Debian's prometheus package, which make up installs.
promtool: up
	@command -v promtool >/dev/null || { echo "error: promtool not found: run make up (it installs Debian's prometheus package)" >&2; exit 1; }
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

# deploy/: the Kubernetes manifests against the API schemas
# (kubernetes-validate --strict, in .stack/venv), the systemd unit
# (systemd-analyze verify), no password but the placeholder.
deploy-check: up
	.stack/venv/bin/python scripts/deploy_check.py

# Every console block of docs/tour.md, run in order on the make up stack and
# compared with what it shows. With the static release binary that `make
# static` (a prerequisite of `test`) has just built: the code a reader runs
# after `cargo build --release`, without a second release build (fat LTO,
# minutes on 2 cores) or the slower debug build.
tour-check: up static
	.stack/venv/bin/python scripts/tour_check.py --bin $(STATIC_BIN)

# Every console block of README.md the same way, with a topic, schema and
# group of its own (--names; the output compared as if they were the
# defaults), then every relative link and anchor of the documents.
readme-check: up static
	.stack/venv/bin/python scripts/tour_check.py --bin $(STATIC_BIN) --doc README.md --names readme
	.stack/venv/bin/python scripts/doc_links.py

BENCH_EVENTS ?= 200000
# The growth row's backlog, folded by one member on a memory:// Tansu
# (0 skips it).
BENCH_BACKLOG ?= 10000000
bench: up build
	.stack/venv/bin/python scripts/bench.py $(FOODPIPE) --events $(BENCH_EVENTS) \
		--growth $(BENCH_BACKLOG) --out target/bench

# The storm's broker, topic and database stay up for checking; make down
# stops that broker (target/chaos/tansu.pid).
CHAOS_SEED ?=
CHAOS_FAULTS ?= 40
chaos: up build
	.stack/venv/bin/python scripts/chaos.py $(FOODPIPE) --faults $(CHAOS_FAULTS) \
		$(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

bench-micro:
	$(CARGO) bench --bench murmur2
	$(CARGO) bench --bench decode

BENCH_CODECS ?= none,lz4,zstd
bench-produce: up build
	.stack/venv/bin/python scripts/bench_produce.py $(FOODPIPE) --events $(BENCH_EVENTS) \
		--compression $(BENCH_CODECS) --fresh-tansu

bench-projections: up
	BENCH_EVENTS=$(or $(PROJECTION_EVENTS),1000000) $(CARGO) bench --bench projections

bench-sink: up build
	@echo "== end to end: Kafka (Tansu) -> foodpipe consume -> PostgreSQL, vs psql \\copy"
	python3 scripts/bench_consume.py sink $(FOODPIPE) --events $(BENCH_EVENTS)
	@echo "== the PostgreSQL sink alone (records in memory), vs psql \\copy"
	BENCH_EVENTS=$(BENCH_EVENTS) $(CARGO) bench --bench sink

bench-memory: up build
	python3 scripts/bench_consume.py memory $(FOODPIPE) --events 100000 --events 1000000

bench-partitions: up build
	python3 scripts/bench_consume.py rebalance $(FOODPIPE)
	python3 scripts/bench_consume.py partitions $(FOODPIPE) --partitions 3 --partitions 400 --partitions 1000

# REBUILD_ENGINE: the private Tansu's store, memory (memory://, the broker
# out of the way) or sqlite.
REBUILD_EVENTS ?= 1000000
REBUILD_ENGINE ?= memory
bench-rebuild: up build
	.stack/venv/bin/python scripts/bench_rebuild.py $(FOODPIPE) --events $(REBUILD_EVENTS) --engine $(REBUILD_ENGINE)

clean: down
	$(CARGO) clean
	rm -rf .stack
