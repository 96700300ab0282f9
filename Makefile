# qemufs: `make run` and `make test` do everything on a fresh Debian 12.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN := bin/qemufs

# make run: an embedded instance rooted here, mounted at ./mnt.
RUN_ROOT ?= $(CURDIR)/.qemufs
RUN_MNT ?= $(CURDIR)/mnt

# Test timeouts are generous: the machine may be a loaded 2-core box.
TEST_TIMEOUT ?= 30m

.PHONY: all deps build run stop test unit e2e guest check bench fuzz clean

all: build

deps:
	@scripts/deps.sh

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/qemufs

run: deps build
	@mkdir -p $(RUN_MNT) $(RUN_ROOT)
	@scripts/demo.sh $(RUN_ROOT)
	@if mountpoint -q $(RUN_MNT); then echo "already mounted at $(RUN_MNT)"; else \
		$(BIN) mount --daemon --root $(RUN_ROOT) $(RUN_MNT); fi
	@echo
	@echo "qemufs is mounted at ./mnt (state under ./.qemufs, daemon log .qemufs/log/qemufs.log)."
	@echo "Boot the demo guest:"
	@echo "  mkdir mnt/demo && cp .qemufs/demo.xml mnt/demo/config.xml"
	@echo "  echo start > mnt/demo/ctl && cat mnt/demo/state"
	@echo "  grep -m1 QEMUFS-GUEST-READY mnt/demo/console"
	@echo "  echo shutdown > mnt/demo/ctl && cat mnt/demo/state"
	@echo "More in README.md. Stop with: make stop   (running guests survive; the next 'make run' re-attaches)"

stop:
	-$(BIN) unmount $(RUN_MNT)

guest:
	@tests/guest/build.sh >/dev/null

check:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...
	staticcheck ./...
	GOOS=darwin $(GO) vet ./capabilities/

# Every test: unit tests, the corpus, and end-to-end tests through a real
# mount booting the test guest. Packages run in parallel.
test: deps build guest check
	QEMUFS_BIN=$(CURDIR)/$(BIN) $(GO) test -timeout $(TEST_TIMEOUT) -p 2 $$($(GO) list ./... | grep -v /tests/corpus)
	@echo "corpus (libvirt's qemuxml2argv cases; pass counts per tier):"
	@set -o pipefail; $(GO) test -timeout $(TEST_TIMEOUT) -count=1 -v -run 'TestCorpus$$' ./tests/corpus | \
		grep -E 'tier[0-9]+: [0-9]+ cases|corpus not available|^(ok|FAIL|--- FAIL|panic)'

# make bench: qemufs against bare QEMU and libvirt's embedded driver (which
# scripts/bench-deps.sh installs for the bench only). BENCH_FLAGS=-quick
# for a short run; docs/performance.md has the numbers.
bench: deps build guest
	@scripts/bench-deps.sh
	$(GO) run ./bench -qemufs $(CURDIR)/$(BIN) $(BENCH_FLAGS)
	@echo "capabilities probing (cold probe vs the same QMP queries on bare QEMU; warm cache):"
	$(GO) test -run '^$$' -bench 'ProbeColdVsBare|ProbeWarm' -benchtime 10x ./capabilities

# make fuzz: every Go fuzz target for FUZZTIME seconds each (default 60);
# not part of make test. Failing inputs land in testdata/fuzz/ and become
# regression cases that make test runs.
FUZZTIME ?= 60
fuzz: deps
	@scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
