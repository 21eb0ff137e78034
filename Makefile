# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install system-deps test-deps lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "loop needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,github,kubernetes,postgres]"
	@touch $(STAMP)

# bubblewrap confines everything the agent wrote (commands, tests, services). Without it `make demo` and
# `make test` still work with a warning; a real `loop fix` then needs --allow-unconfined.
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
	      || echo "warning: could not install bubblewrap; the demo and tests run unconfined, and loop fix needs --allow-unconfined"; \
	  else \
	    echo "warning: bubblewrap (bwrap) not found; install it (apt-get install bubblewrap) to confine agent-written code"; \
	  fi; }

# Debian's chromium drives the run pages' browser tests (tests/pages); without it those tests skip.
test-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "warning: could not install chromium; the run pages' browser tests will skip"; \
	  else \
	    echo "warning: chromium not found; the run pages' browser tests will skip (apt-get install chromium)"; \
	  fi; }

demo: $(STAMP) system-deps
	$(BIN)/loop demo

# Four workers: most of a test's time is spent waiting on real services and processes, not on a core.
test: $(STAMP) system-deps test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 4 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/batch.py

clean:
	rm -rf $(VENV) build *.egg-info
