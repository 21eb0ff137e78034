# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install system-deps lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "loop needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,github,kubernetes,postgres]"
	@touch $(STAMP)

# bubblewrap confines the agent's commands; without it they run unconfined, with a warning.
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
	      || echo "warning: could not install bubblewrap; agent commands will run without confinement"; \
	  else \
	    echo "warning: bubblewrap (bwrap) not found; install it (apt-get install bubblewrap) to confine agent commands"; \
	  fi; }

demo: $(STAMP) system-deps
	$(BIN)/loop demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/batch.py

clean:
	rm -rf $(VENV) build *.egg-info
