# Quick start: `make demo` (set up + compile/run the bundled example), then `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user

.PHONY: setup demo test clean

setup: $(VENV)/.installed
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "note: install the cross toolchains and emulator with: sudo apt-get install$$missing"; fi; \
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
