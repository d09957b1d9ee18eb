# mmembed: one command to set up and run the demo, one to set up and run the tests.
#   make demo   -> .venv/, then offline end to end: digits -> train a small model -> embed -> index -> search (out: demo/)
#   make test   -> .venv/, then lint + the whole test suite (what CI runs)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: install system-deps demo test lint format bench clean

# Debian packages the tests use: Chromium drives the browser test (Playwright never downloads a browser);
# dataset-fashion-mnist holds the real images of the training tests and the quality benchmark.
SYSTEM_PACKAGES := chromium dataset-fashion-mnist
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi

# One install for every target: dev includes the demo extra (scikit-learn's digits for `make demo`) and adds
# scikit-image (the photos of the tests and benchmarks); an upgraded pip resolves the nested extra.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

# clip-retrieval's ClipClient for the protocol test (tests/serve/test_clip_retrieval_api.py): the wheel only, since
# its dependencies clash with ours and its client module needs just requests; the test checks the wheel's sha256.
CLIP_CLIENT_WHEEL := $(VENV)/wheels/clip_retrieval-2.45.0-py3-none-any.whl
$(CLIP_CLIENT_WHEEL): | $(STAMP)
	$(BIN)/pip download --quiet --no-deps --only-binary :all: --dest $(VENV)/wheels clip-retrieval==2.45.0

install: $(STAMP) $(CLIP_CLIENT_WHEEL)

demo: $(STAMP)
	$(BIN)/mmembed demo --out demo

test: $(STAMP) $(CLIP_CLIENT_WHEEL) system-deps lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/embed_throughput.py
	$(BIN)/python benchmarks/index_bench.py --n 100000
	$(BIN)/python benchmarks/dedup_eval.py --sizes 20000,50000,100000
	$(BIN)/python benchmarks/serve_load.py --duration 10

clean:
	rm -rf demo .pytest_cache .ruff_cache
