# SMVS build/test entry points.
#
#   make demo   build everything and run the end-to-end demo (smvs-demo)
#   make test   build the binaries, then run the whole workspace test suite
#               against a throw-away PostgreSQL server (scripts/with-postgres.sh)
#
# Other targets: build (default), deps, bench, lint, clean.
# System packages are installed by scripts/deps.sh (needs root if any are missing).

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Only pass --locked when there is a lock file to honour.
LOCKED := $(if $(wildcard Cargo.lock),--locked,)

.DEFAULT_GOAL := build
.PHONY: deps build test demo bench lint clean

deps:
	bash scripts/deps.sh

build: deps
	$(CARGO) build --workspace --bins $(LOCKED)

# Integration tests spawn the built binaries as processes, so build first.
test: deps build
	bash scripts/with-postgres.sh $(CARGO) test --workspace $(LOCKED)

demo: deps build
	$(CARGO) run -q $(LOCKED) -p smvs-tests --bin smvs-demo

# The benchmark spawns the release binaries, so build them first.
bench: deps
	$(CARGO) build --release --workspace --bins $(LOCKED)
	bash scripts/with-postgres.sh $(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench-messages

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(LOCKED) -- -D warnings

clean:
	$(CARGO) clean
