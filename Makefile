# foodpipe: one entry point for people and CI.
#
#   make up      start PostgreSQL and a Kafka-protocol broker (idempotent)
#   make down    stop the broker that `make up` started
#   make demo    up, produce a few thousand orders, consume, print a summary
#   make test    up, then fmt, clippy, compose check and every test
#   make bench   the criterion benchmarks

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
DEMO_EVENTS ?= 5000
FOODPIPE := ./target/release/foodpipe

.PHONY: help up down build demo test lint bench clean

help:
	@sed -n 's/^#   //p' Makefile

up:
	@scripts/stack-up.sh

down:
	@scripts/stack-down.sh

build:
	$(CARGO) build --release --bin foodpipe

demo: up build
	$(FOODPIPE) produce --count $(DEMO_EVENTS) --partitions 3
	$(FOODPIPE) consume --until-caught-up
	$(FOODPIPE) status

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	docker-compose -f docker-compose.yml config -q

test: up lint
	$(CARGO) test --workspace

bench:
	$(CARGO) bench --bench murmur2

clean: down
	$(CARGO) clean
	rm -rf .stack
