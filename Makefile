# Quick start: `make demo` (set up + compile/run the bundled example), then `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user
# arm64 is enabled as a dpkg architecture (nothing installed from it): the benchmark's onnxruntime
# aarch64 reference downloads Debian's arm64 Python into edgec's cache (examples/arm_reference.py)

.PHONY: setup demo test clean

setup: $(VENV)/.installed
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	arm64=""; dpkg --print-foreign-architectures | grep -qx arm64 || arm64="yes"; \
	if [ -n "$$missing$$arm64" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    if [ -n "$$arm64" ]; then dpkg --add-architecture arm64; fi; \
	    apt-get update -q && { [ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	  else echo "note: install the cross toolchains and emulator with: sudo apt-get install$$missing" \
	            "(and for the benchmark's ARM reference: sudo dpkg --add-architecture arm64 && sudo apt-get update)"; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,torch]"
	touch $@

demo: setup
	$(PY) -m examples.quickstart

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
