# lvsd: the README explains the targets. Lab targets need root (namespaces,
# apt-get); the first lab run installs qemu and a kernel into the cache.
GO ?= go
LAB := $(GO) run ./cmd/lvslab

.PHONY: test test-host test-lab demo lab-setup vet bench bench-go bench-ipvs bench-health bench-failover bench-stability build

# The whole suite: host tests, then lab-tagged tests in one VM boot.
test:
	@start=$$(date +%s); rc=0; \
	echo "== host tests: $(GO) test -race ./..."; \
	$(GO) test -race ./... || rc=1; \
	echo "== lab tests (in the VM): $(LAB) test ./..."; \
	$(LAB) test ./... || rc=1; \
	echo "make test: total $$(( $$(date +%s) - start ))s, $$( [ $$rc = 0 ] && echo PASS || echo FAIL )"; \
	exit $$rc

test-host:
	$(GO) test -race ./...

test-lab:
	$(LAB) test ./...

# The main job, live: a persistent IPVS service in the VM serving clients.
demo:
	$(LAB) demo

lab-setup:
	$(LAB) setup

vet:
	test -z "$$(gofmt -l .)"
	$(GO) vet ./...
	$(GO) vet -tags lab ./...

# Benchmarks print figures next to their targets and anchors; they never
# assert speed. bench-stability (5 minutes under a CPU hog) is separate.
bench: bench-go bench-ipvs bench-health bench-failover

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./config ./director ./healthcheck ./daemon ./metrics ./ipvsnl

bench-ipvs:
	$(GO) build -o bin/lvsd ./cmd/lvsd
	$(GO) build -o bin/bench-ipvs ./bench/ipvs
	$(LAB) run -mem 2048 -- $(CURDIR)/bin/bench-ipvs -lvsd $(CURDIR)/bin/lvsd

bench-health:
	$(GO) run ./bench/health -n 10000 -duration 30s

bench-failover:
	$(GO) run ./bench/failover -trials 10

bench-stability:
	$(GO) run ./bench/failover -stability 5m

build:
	$(GO) build -o bin/ ./cmd/lvsd ./cmd/lvsctl
