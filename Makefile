# pie: `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ROOT ?= demo-data

.PHONY: test demo bench clean browser

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian's chromium renders the HTML pages in the tests (headless).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: $(STAMP) browser
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/pie --root $(DEMO_ROOT) demo

bench: $(STAMP)
	@set -e; for script in tests/bench/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script; \
	done

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache *.egg-info
