# enipeer: common tasks. `make test` is what CI runs (see .ci/run).
CARGO ?= cargo

.PHONY: all build release test lint fmt fuzz clean-lab assets deb rpm packages package-test demo measure \
	lab-deps bench

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## What the tests and the lab need, installed when missing (tests/lab-deps.sh): Debian packages
## (iproute2, nftables, nginx-light, python3-venv; with apt-get as root, else it says what to
## install) and the lab's Python (moto, the AWS CLI) in .venv/, pinned by
## tests/requirements-lab.txt. Takes milliseconds when nothing changed. Targets that run the lab
## set LAB_DEPS_ARGS = --lab: root is required and every lab tool must be there.
LAB_DEPS_ARGS ?=
lab-deps:
	@tests/lab-deps.sh $(LAB_DEPS_ARGS)

## The full test suite: formatting, lints, then every test. Tests that need root (network
## namespaces, netlink) say so and skip when not run as root; CI runs as root.
test: lab-deps lint
	$(CARGO) test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Fuzz the heartbeat decoder (needs cargo-fuzz; nightly features via RUSTC_BOOTSTRAP).
fuzz:
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode -- -max_total_time=60

## Packages. One release build feeds both; the man pages (enipeer(8) and its subcommands' from
## the CLI definition, enipeer.toml(5) from the key reference) and the completions are generated
## by the release binary itself. Output: target/packages/*.deb, *.rpm.
## Needs cargo-deb and cargo-generate-rpm (`cargo install --locked cargo-deb cargo-generate-rpm`).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
ASSETS := target/assets
PACKAGES := target/packages

assets: release
	rm -rf $(ASSETS)
	$(TARGET_DIR)/release/enipeer generate-assets $(ASSETS) >/dev/null
	gzip -9n $(ASSETS)/man/*.8 $(ASSETS)/man/*.5

deb: assets
	mkdir -p $(PACKAGES)
	rm -f $(PACKAGES)/*.deb
	$(CARGO) deb --no-build --no-strip --output $(PACKAGES)/

rpm: assets
	mkdir -p $(PACKAGES)
	rm -f $(PACKAGES)/*.rpm
	$(CARGO) generate-rpm --output $(PACKAGES)/

packages: deb rpm

## Builds both packages, checks their contents and metadata, installs the .deb and exercises it
## (needs root, dpkg, rpm, man-db and systemd-analyze; .ci/run installs them).
package-test: lab-deps
	packaging/test-packages.sh

## The lab demo: a whole Availability Zone on this machine, a failover and a yield, narrated.
## Needs root; installs what it needs when missing (lab-deps).
demo: LAB_DEPS_ARGS = --lab
demo: lab-deps
	$(CARGO) test --quiet --test e2e demo -- --ignored --nocapture

## Failover figures for the primary-host failure (ENIPEER_LAB_RUNS, ENIPEER_LAB_PROFILE,
## ENIPEER_LAB_FAST=1 for 50 ms / 250 ms heartbeats). Needs root.
measure: LAB_DEPS_ARGS = --lab
measure: lab-deps
	$(CARGO) test --quiet --test e2e measure -- --ignored --nocapture

## enipeer against keepalived 2.2 + the AWS CLI recipe in the lab, both cloud profiles, in one
## sitting (tests/bench.rs): a table and idle cost on stdout, docs/bench.svg and docs/bench.md.
## BENCH_QUICK=1 runs 2 failovers per setting instead of 10 (instant) / 5 (aws-like). Needs root;
## installs keepalived and the lab's Python when missing. A benchmark: not part of CI. The agent
## measured is the release build (what the packages ship), so the idle cost is the real one.
bench: LAB_DEPS_ARGS = --lab keepalived:keepalived
bench: lab-deps release
	ENIPEER_LAB_BIN=$(TARGET_DIR)/release/enipeer \
		$(CARGO) test --quiet --test bench bench -- --ignored --nocapture

## Removes a lab left behind by a killed run (its namespaces, and what runs in them).
clean-lab:
	for ns in enpl-rt enpl-cloud enpl-a enpl-b enpl-cli enpl-pool; do \
		ip netns pids $$ns 2>/dev/null | xargs -r kill -9; ip netns del $$ns 2>/dev/null; done; true
