# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned to the CPU wheel this workplace serves locally: left to the resolver, a
# dependency's bare "torch" would pull several GB of CUDA packages.
TORCH ?= torch==2.13.0

# setup.py compiles dataforge/text/_kernels.c into the package (a C compiler is needed): a changed
# kernel re-runs the install, which rebuilds it.
$(STAMP): pyproject.toml setup.py dataforge/text/_kernels.c dataforge/text/vendor/xxhash.h | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/dataforge build recipes/gsm8k_reasoning.yaml --out build

# the HTML report's browser test drives Debian's Chromium (Playwright's own browser download
# needs a network this workplace does not have); installed once, as root or through sudo
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium

test: $(STAMP) $(CHROMIUM)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q
	$(BIN)/ruff check dataforge trainers tests bench

lint: $(STAMP)
	$(BIN)/ruff check dataforge trainers tests bench
	$(BIN)/ruff format --check dataforge trainers tests bench

clean:
	rm -rf build $(VENV)
