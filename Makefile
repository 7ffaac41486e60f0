# weightkit: the three entry points are `make demo`, `make test` and `make venv`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
export KERAS_BACKEND := torch

.PHONY: venv demo test lint browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch==2.13.0 first when torch is not importable: that pin takes the local CPU build,
# while an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m weightkit.warmup
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m weightkit.demo

test: lint browser
	$(PY) -m pytest -q

# The structure, checked: the import layers of docs/architecture.md (pyproject.toml's import-linter
# contracts), ruff (pyflakes, isort, bugbear) and mypy on the package.
lint: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# The report test drives a real headless Chromium (Debian's chromium + chromium-driver).
# Installed when missing and possible; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	 { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1; } || \
	 echo "note: could not install chromium/chromium-driver; the headless-browser report test will be skipped"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# Long fuzzing run of every reader: thousands of mutated files per format (FUZZ_EXAMPLES=N to
# change), each in a memory-limited worker with a per-input time limit; tests/test_fuzz.py.
.PHONY: fuzz fidelity
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q --timeout 0 tests/test_fuzz.py

# Kinds and output axes inferred from files, against the live modules that own the tensors
# (docs/fidelity.md). Installs transformers, torchvision and timm beside the pinned torch (no CUDA torch pulled).
fidelity: $(STAMP)
	echo "torch==$$($(PY) -c 'import torch; print(torch.__version__)')" > .fidelity-pin.txt
	$(PY) -m pip install -q -c .fidelity-pin.txt transformers
	# torchvision's model code only (its C++ operators are built for another torch: not loaded), and timm
	$(PY) -m pip install -q --no-deps "torchvision==0.28.*" timm
	KERAS_BACKEND=torch PYTHONPATH=src $(PY) bench/fidelity.py
