# offpath: `make run` starts the whole local system, `make test` runs every test.
# Both install what they need (virtual environment, dependencies, generated code,
# the buf CLI) into ignored folders of this checkout.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOOLS  := .tools
BUF    := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
PROTOS := $(shell find protos -name '*.proto')

.PHONY: help install gen run test bench bench-quick bench-readme faults lint fmt unit integration e2e lock clean bootstrap

help:
	@echo "make run    start local AWS endpoint + QueryService + AnalyticsIngest (Ctrl-C stops all)"
	@echo "make test   lint, type-check and run every test"
	@echo "make audit  dependency vulnerability audit of requirements.lock (needs the package registry)"
	@echo "make bench        the performance contract, cell by cell: met / missed (about 18 min)"
	@echo "make bench-quick  the same cells, fewer and shorter rounds (about 95 s)"
	@echo "make bench-readme write the README's results table from the newest bench.json"
	@echo "make faults  every reliability promise under injected faults, a row per case (about 11 min)"
	@echo "make gen    regenerate Python code from protos/"
	@echo "make lock   re-resolve requirements.lock from pyproject.toml and tools/pyproject.toml"
	@echo "make clean  remove the environment, tools and generated code"

# The environment: dependencies from the lock, generated code, then the project
# (the services and the client) and its development tools (tools/, never
# installed in production), both editable (after gen, so offpath.v1 is
# importable).
$(VENV)/.installed: requirements.lock pyproject.toml tools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	PYTHON=$(PY) scripts/gen_protos.sh
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	  -e . -e tools
	touch $@ gen/.stamp

gen/.stamp: $(VENV)/.installed $(PROTOS) scripts/gen_protos.sh
	PYTHON=$(PY) scripts/gen_protos.sh
	touch $@

install: $(VENV)/.installed gen/.stamp

gen:
	rm -f gen/.stamp
	$(MAKE) gen/.stamp

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

# buf too, so the `buf curl` commands the banner prints work at once.
run: install $(BUF)
	exec $(PY) -m offpath.dev.stack

# The benchmark: every goal of the performance contract as a cell with its
# verdict, from interleaved rounds (medians); results in bench-results/.
# Extra options: make bench BENCH_ARGS="--rounds 5".
bench: install
	$(PY) -m offpath.bench --profile full $(BENCH_ARGS)

bench-quick: install
	$(PY) -m offpath.bench --profile quick $(BENCH_ARGS)

# README.md's table between the bench markers, from BENCH_JSON (default: the
# newest bench-results/*/bench.json).
bench-readme: install
	$(PY) -m offpath.bench.readme $(BENCH_JSON)

# The fault suite: each reliability promise as a case against the real
# services and the local AWS endpoint, faults injected by a proxy in front of
# it, one row per case; results in faults-results/. Loopback only, at most
# 100 req/s. Extra options: make faults FAULTS_ARGS="--quick" (or "--soak",
# "--cases sqs-5xx poison").
faults: install
	$(PY) -m offpath.faults $(FAULTS_ARGS)

bootstrap: install
	$(PY) -m offpath.dev.bootstrap

# buf breaking compares protos/ with protos/offpath-v1.binpb, the released
# contract as a buf image, committed. Not a git ref: comparing with
# .git#branch=main proves nothing on main itself, and a ref needs history
# that a shallow CI clone lacks. After a deliberate, compatible contract
# change is released, refresh it and commit it with the change:
#   $(BUF) build protos --exclude-source-info -o protos/offpath-v1.binpb
lint: install $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services clients tools tests
	$(BUF) lint protos
	$(BUF) breaking protos --against protos/offpath-v1.binpb

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every test: lint and types first (cheap), then unit, integration and e2e.
# pytest's exit code 5 (no test collected) is turned into a failure with a
# plain message: a run that tested nothing has not passed.
test: lint
	OFFPATH_BUF=$(abspath $(BUF)) $(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The dependency audit (offpath.dev.audit): pip-audit where PyPI's per-version
# JSON is served, else PyPI's project JSON, stating which pins it could only
# partly check. Needs the package registry, so it is not part of make test
# (whose result depends on the code alone). Accepted findings, with a reason
# and an expiry: tools/audit-accepted.toml.
.PHONY: audit
audit: install
	$(PY) -m offpath.dev.audit $(AUDIT_ARGS)

# By marker (tests/conftest.py marks each test by its folder).
unit: install
	$(PY) -m pytest -m unit

integration: install
	$(PY) -m pytest -m integration

e2e: install $(BUF)
	OFFPATH_BUF=$(abspath $(BUF)) $(PY) -m pytest -m e2e

lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check ".[services,report,dev]" ./tools
	.lock-venv/bin/pip freeze --all --exclude pip --exclude offpath --exclude offpath-tools \
	  | sed '/^-e /d' > requirements.lock
	rm -rf .lock-venv build tools/build

clean:
	rm -rf $(VENV) $(TOOLS) gen .pytest_cache .mypy_cache .ruff_cache
