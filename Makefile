# tokenward: `make test` and `make demo` work on a fresh clone (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest browser demo bench soak fuzz clean cli-reference docs-tools pgbouncer

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench demo
	$(BIN)/ruff format --check src tests bench demo

# The tests and benchmarks too, as strictly as the library (one run: bench/ imports tests' workers).
typecheck: $(STAMP)
	$(BIN)/mypy --strict src demo tests bench

# tests/test_browser.py drives Debian's chromium (never a browser download); install it once.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# tests/test_liveness.py runs its own PgBouncer (transaction pooling) in front of PostgreSQL.
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || { \
	    echo "installing pgbouncer (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }

# The docs' shell snippets use curl and jq (tests/test_docs_snippets.py runs them).
docs-tools:
	@command -v curl >/dev/null 2>&1 && command -v jq >/dev/null 2>&1 || { \
	    echo "installing curl and jq (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl jq >/dev/null; }

pytest: $(STAMP) browser docs-tools pgbouncer
	$(BIN)/pytest -q

test: lint typecheck pytest

# The demo lives in demo/ (a clone of the repository), not in the package.
demo: $(STAMP)
	$(BIN)/python -m demo

# tokenward vs its peers, side by side (about 14 minutes); writes docs/benchmarks.md.
# Needs Redis and PostgreSQL for the network stores (left out when they do not answer).
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The issue's 10-minute soak (64 workers, 1-second tokens): 0 failures, RSS within 5 %.
soak: $(STAMP)
	$(BIN)/python bench/run.py --only soak --soak-duration 600

# schemathesis over the broker's OpenAPI document with many more cases per operation than
# `make test` runs (tests/test_broker_schema.py; 0 failures expected).
fuzz: $(STAMP)
	TOKENWARD_FUZZ_EXAMPLES=$${TOKENWARD_FUZZ_EXAMPLES:-500} $(BIN)/pytest -q -p no:cacheprovider \
	    tests/test_broker_schema.py tests/test_broker_hostile.py

# docs/cli.md's command reference, regenerated from the CLI (tests/test_cli_reference.py checks it).
cli-reference: $(STAMP)
	$(BIN)/python -m tokenward.cli_reference docs/cli.md

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
