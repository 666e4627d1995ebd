# Entry points named in README.md; .ci/run calls `make test`.
PY ?= python3
export PATH := /usr/local/sbin:/usr/local/bin:$(PATH)

.PHONY: setup lint install unit test demo generate bench

setup:
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

lint: setup
	ruff check .
	mypy
	lint-imports

# Pure tests: no root, no cluster.
unit: setup
	$(PY) -m pytest -m "not root and not cluster and not node" -p no:cacheprovider

# The real parts the tests run against (root; idempotent, cached in /var/cache/architect).
# The cluster build goes first: cold, it is most of CI's time.
install: setup
	e2e/cluster/install
	runtime/checkpoint/install
	runtime/network/install
	runtime/shim/install
	$(PY) -m e2e.images.architect --cache /var/cache/architect/images

# Everything CI runs: installs the real parts, then every test against them,
# the kuttl scenarios, and a teardown that fails if anything is left behind.
test: lint install
	$(PY) -m pytest
	e2e/kuttl-run
	e2e/cluster/down

# The main thing, as a user gets it (root): the local cluster, the chart installed
# (operator, webhooks, the daemon DaemonSet that sets up the node), the seed's app
# hibernating when idle and waking on a request with its state; prints each step,
# the wake time against the cold start, and how to tear down.
demo: install
	e2e/cluster/up >/dev/null
	$(PY) -m e2e.product demo

# Regenerate committed outputs (CRDs, reference docs); tests fail when they drift.
generate: setup
	architect crds --write crds
	$(PY) -m charts.generate
	architect docs --write docs

bench: setup
	$(PY) bench/policy.py
	$(PY) bench/engine_evaluate.py
	$(PY) bench/engine_admission.py
	$(PY) bench/engine_transfer.py
	$(PY) bench/network_wake.py
	$(PY) bench/checkpoint.py
	$(PY) bench/hibernate_vs_dump.py
	$(PY) bench/wake_latency.py
	$(PY) bench/shim_bench.py
	$(PY) bench/daemon_bench.py
	$(PY) bench/cluster_bench.py
	$(PY) bench/product_wake.py
	$(PY) bench/persistent_checkpoint.py
	$(PY) bench/drain.py
