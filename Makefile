# Palisade: the single entry point. Run as root on Debian (CI and the lab do).
SHELL := /bin/bash
CARGO ?= cargo
APT_PACKAGES := clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config \
	iproute2 nftables iptables netcat-openbsd curl chromium \
	dnsmasq-base kcat protobuf-compiler python3-protobuf

.PHONY: deps build lab test fmt clippy bench

# Installs the system packages Palisade needs (idempotent; quick when present).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true

build: deps
	$(CARGO) build --release --locked -p palisade

# The hands-on lab: Palisade's main job.
lab: deps
	$(CARGO) run --release --locked -p palisade -- lab

# Incremental caches are of no use to a one-off build and double its size.
test: export CARGO_INCREMENTAL ?= 0
test: deps
	@df -h . | awk 'NR == 2 { print "disk: " $$4 " free of " $$2 }'
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) test --locked --workspace --no-fail-fast

bench: deps
	$(CARGO) bench -p palisade-policy
