# enipeer: common tasks. `make test` is what CI runs (see .ci/run).
CARGO ?= cargo

.PHONY: all build release test lint fmt fuzz clean-lab

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## The full test suite: formatting, lints, then every test. Tests that need root (network
## namespaces, netlink) say so and skip when not run as root; CI runs as root.
test: lint
	$(CARGO) test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Fuzz the heartbeat decoder (needs cargo-fuzz; nightly features via RUSTC_BOOTSTRAP).
fuzz:
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode -- -max_total_time=60
