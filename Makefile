# SMVS build/test entry points.
#
#   make demo   build everything and run the end-to-end demo (smvs-demo)
#   make test   build the binaries, then run the whole workspace test suite
#               against a throw-away PostgreSQL server and a streaming read replica
#               of it (scripts/with-postgres.sh --replica)
#
#   make fuzz   run every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60) each
#
# Other targets: build (default), deps, bench, lint, clean, release, install, uninstall, deb.
#
#   make deb     Debian packages smvs-host, smvs-directory and smvsctl in target/debian
#                (scripts/deb.sh; release build; `apt install ./target/debian/smvs-host_*.deb`)
#   make image   the host's container image smvs-host:VERSION, with podman, from Debian
#                packages alone (scripts/image.sh; dist/container/)
# System packages are installed by scripts/deps.sh (needs root if any are missing).
#
#   make release && sudo make install    [PREFIX=/usr/local] [DESTDIR=] [BUILD=release|debug]
#   sudo make uninstall                  (same PREFIX and DESTDIR: removes what install wrote)
#
# install copies the binaries already in target/$(BUILD) (it builds them only when absent, so
# run `make release` after changing the code), the systemd units, sysusers.d and tmpfiles.d
# files, dist/dbus/, man pages and shell completions, and the default configs into
# $(DESTDIR)$(SYSCONFDIR)/smvs (never over existing ones). It records every file and directory
# it makes in $(PREFIX)/share/smvs/install-manifest, which is what uninstall removes (an edited
# config is kept). See scripts/install.sh.

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Only pass --locked when there is a lock file to honour.
LOCKED := $(if $(wildcard Cargo.lock),--locked,)

PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= release
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DBUSDIR ?= $(PREFIX)/share/dbus-1
# The system bus reads policies from /usr/share/dbus-1/system.d and /etc/dbus-1/system.d only.
DBUSPOLICYDIR ?= $(if $(filter /usr,$(PREFIX)),$(DBUSDIR)/system.d,$(SYSCONFDIR)/dbus-1/system.d)
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
INSTALL_VARS = DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BUILD='$(BUILD)' BINDIR='$(BINDIR)' \
	SYSCONFDIR='$(SYSCONFDIR)' UNITDIR='$(UNITDIR)' USERUNITDIR='$(USERUNITDIR)' \
	SYSUSERSDIR='$(SYSUSERSDIR)' TMPFILESDIR='$(TMPFILESDIR)' DBUSDIR='$(DBUSDIR)' \
	DBUSPOLICYDIR='$(DBUSPOLICYDIR)' \
	MANDIR='$(MANDIR)' BASHCOMPDIR='$(BASHCOMPDIR)' ZSHCOMPDIR='$(ZSHCOMPDIR)' \
	FISHCOMPDIR='$(FISHCOMPDIR)' CARGO='$(CARGO)'

.DEFAULT_GOAL := build
.PHONY: deps build test demo bench lint fuzz clean release install uninstall deb image profile-directory

deps:
	bash scripts/deps.sh

build: deps
	$(CARGO) build --workspace --bins $(LOCKED)

release:
	$(CARGO) build --release --workspace --bins $(LOCKED)

install:
	$(INSTALL_VARS) bash scripts/install.sh install

uninstall:
	$(INSTALL_VARS) bash scripts/install.sh uninstall

deb: deps
	CARGO='$(CARGO)' BUILD=release bash scripts/deb.sh target/debian

image: deps
	CARGO='$(CARGO)' BUILD=release bash scripts/image.sh

# Integration tests spawn the built binaries as processes, so build first. Then the installed
# layout: install/uninstall into a temp DESTDIR, the systemd units (verify, exposure), and
# the Debian packages installed, removed and purged in a clean Debian 12 root (debootstrap),
# and the container image (built, inspected, and its filesystem run under chroot).
test: deps build
	bash scripts/with-postgres.sh --replica $(CARGO) test --workspace $(LOCKED)
	MAKE='$(MAKE)' bash scripts/check-install.sh
	MAKE='$(MAKE)' bash scripts/check-units.sh
	CARGO='$(CARGO)' bash scripts/check-deb.sh
	CARGO='$(CARGO)' bash scripts/check-image.sh
	bash scripts/check-hosting.sh

demo: deps build
	$(CARGO) run -q $(LOCKED) -p smvs-tests --bin smvs-demo

# The benchmark spawns the release binaries, so build them first.
bench: deps
	$(CARGO) build --release --workspace --bins $(LOCKED)
	bash scripts/with-postgres.sh --replica $(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench-messages
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench-devices
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench-chat
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench-dht
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --bin smvs-bench-density
	$(CARGO) run -q --release $(LOCKED) -p smvs-tests --features bench-baseline --bin smvs-bench-calls

# Where a directory's CPU goes per look-up (BENCHMARKS.md); needs perf (linux-perf).
profile-directory: deps
	$(CARGO) build --release --workspace --bins $(LOCKED)
	bash scripts/profile-directory.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(LOCKED) -- -D warnings
	$(CARGO) clippy -p smvs-tests --features bench-baseline --bin smvs-bench-calls $(LOCKED) -- -D warnings

# Each target runs on a scratch copy of its committed corpus (fuzz/corpus/<target>), so what
# libFuzzer adds stays out of the repository; crashes land in fuzz/artifacts/<target>/ and fail
# the run (reproduce one with `cargo +nightly fuzz run <target> <file>`). No sanitizer by
# default: the only unsafe code is smvs-crypto's calls into libsodium, which ASan would not
# instrument, and without it each target runs several times faster. FUZZ_SANITIZER=address
# turns it back on.
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= none
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
fuzz:
	FUZZ_SECONDS='$(FUZZ_SECONDS)' FUZZ_SANITIZER='$(FUZZ_SANITIZER)' \
		bash scripts/fuzz.sh $(FUZZ_TARGETS)

clean:
	$(CARGO) clean
