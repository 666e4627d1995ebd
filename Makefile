# Entry points named in README.md; .ci/run calls `make test`.
PY ?= python3
export PATH := /usr/local/sbin:/usr/local/bin:$(PATH)

.PHONY: setup lint unit test generate bench

setup:
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

lint: setup
	ruff check .
	mypy
	lint-imports

# Pure tests: no root, no cluster.
unit: setup
	$(PY) -m pytest -m "not root and not cluster and not node"

# Everything CI runs: installs the real parts, then every test against them.
test: lint
	$(PY) -m pytest

# Regenerate committed outputs (CRDs, reference docs); tests fail when they drift.
generate: setup
	architect crds --write crds
	architect docs --write docs

bench: setup
	$(PY) bench/policy.py
