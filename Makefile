# Two commands do all set-up on a fresh machine: `make devnet` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: devnet test lint typecheck unit bootstrap clean

# Create the virtual environment and install the pinned dependencies once
# (re-run when a requirements file or pyproject.toml changes).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python >= 3.11 is required"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
		command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq python3-venv; }
	@# bubblewrap: the compute market's default executor (sandbox); without it that executor is
	@# unavailable (the provider says so), nothing else changes.
	@command -v bwrap >/dev/null || { command -v apt-get >/dev/null && apt-get update -qq \
		&& apt-get install -y -qq bubblewrap; } \
		|| echo "bubblewrap is not installed: the sandbox executor will be unavailable"
	@# chromium: Debian's browser, which the browser tests (tests/test_web_browser.py) drive with
	@# Playwright (never `playwright install`: it downloads a browser build); without it they are
	@# skipped with the reason printed.
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && apt-get update -qq \
		&& apt-get install -y -qq chromium; } \
		|| echo "chromium is not installed: the browser tests will be skipped"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

bootstrap: $(STAMP)

# The AI runtime (docs/ai.md): a venv with PyTorch's CPU wheel and Qoin's AI job program, which
# compute providers mount at /runtime for `qoin ai` jobs. The tests' providers use this one
# (QOIN_AI_RUNTIME chooses another); `qoin ai runtime install` re-checks it and does nothing when
# it is current, so this runs at every `make test` in a second.
AI_RUNTIME := .ai-runtime
.PHONY: ai-runtime
ai-runtime: $(STAMP)
	$(BIN)/qoin ai runtime install --dir $(AI_RUNTIME)

# The main job: a local network of real nodes over p2p (3 nodes, 2 mining, transfers gossiped,
# 3 storage providers, 2 compute providers with the AI runtime and a mediator, and one consensus
# client with no execution client of its own that judges and mines through the nodes' execution
# clients over p2p; DIR/devnet.json says where everything runs and which keystore to use)
# with a live view; Ctrl-C stops every process. Options: `qoin devnet --help`, README.md.
devnet: $(STAMP) ai-runtime
	$(BIN)/qoin devnet --storage-providers 3 --compute-providers 2 --mediators 1 \
		--remote-nodes 1 --ai-runtime $(AI_RUNTIME)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

# The whole suite, in two test processes (pytest-xdist; an idle process takes tests from the other).
# `make unit WORKERS=0` runs it in one process.
WORKERS ?= 2
unit: $(STAMP) ai-runtime
	$(BIN)/pytest -q -n $(WORKERS) --dist worksteal

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The example contracts (examples/contracts/README.md): rebuild every .wasm from its source, or
# check that the committed builds are exactly what the sources make (needs npm for the
# AssemblyScript one).
.PHONY: contracts contracts-check
contracts: $(STAMP)
	$(BIN)/python examples/contracts/build.py

contracts-check: $(STAMP)
	$(BIN)/python examples/contracts/build.py --check
