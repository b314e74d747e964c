# Two commands on a fresh machine:  make demo  (serve the bundled model, classify a text)
#                                   make test  (lint and the whole test suite, as CI runs it)
# The venv is made from the interpreter whose libpython Triton's Python-backend stub embeds (the
# system's): the stub takes its standard library from the venv, and a newer patch release's
# library on an older core breaks (multiprocessing's resource tracker, for one).
PYTHON ?= /usr/bin/python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE ?= NASA's new telescope spots water vapour on a planet beyond the solar system
APT    := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: setup venv-interpreter containers demo test test-unit test-integration lint format serve clean
setup: venv-interpreter containers $(VENV)/.installed

# A venv made from another interpreter (an older set-up, a pyenv python first on PATH) is rebuilt.
venv-interpreter:
	@if [ -f $(VENV)/pyvenv.cfg ] && ! grep -qx "home = $$(dirname $$(readlink -f $(PYTHON)))" $(VENV)/pyvenv.cfg; then \
	  echo "$(VENV) was made from another interpreter than $(PYTHON): rebuilding it"; rm -rf $(VENV); fi

# What the container tests need: podman (root, host network), debootstrap for a local base
# image, podman-compose; runc may not set rlimits in a sandboxed machine, so none are asked for;
# crun refuses a hybrid cgroup layout (v1 controllers with a v2 mount beside them), runc runs there.
containers:
	@need=""; for tool in podman debootstrap podman-compose; do command -v $$tool >/dev/null || need="$$need $$tool"; done; \
	  if [ -n "$$need" ]; then echo "installing:$$need"; apt-get update -qq && $(APT) $$need >/dev/null; fi
	@f=/etc/containers/containers.conf; grep -qs '^default_ulimits' $$f || { mkdir -p /etc/containers; \
	  if grep -qs '^\[containers\]' $$f; then sed -i '/^\[containers\]/a default_ulimits = []' $$f; \
	  else printf '[containers]\ndefault_ulimits = []\n' >> $$f; fi; }
	@f=/etc/containers/containers.conf; if grep -qs ' /sys/fs/cgroup/unified cgroup2 ' /proc/mounts \
	  && ! grep -qs '^runtime' $$f; then command -v runc >/dev/null || $(APT) runc >/dev/null; \
	  if grep -qs '^\[engine\]' $$f; then sed -i '/^\[engine\]/a runtime = "runc"' $$f; \
	  else printf '[engine]\nruntime = "runc"\n' >> $$f; fi; fi

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	@# Build tools of NVIDIA's libtorch backend; the Python backend's stub embeds the system's
	@# libpython of the same version; Debian's docker-compose validates docker-compose.yml in
	@# the tests (there is no Docker engine here); wrk is moe bench's load generator.
	@v=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	  need=""; \
	  for tool in cmake ninja g++ docker-compose wrk; do command -v $$tool >/dev/null || need="$$need $$tool"; done; \
	  [ -f /usr/share/cmake/RapidJSON/RapidJSONConfig.cmake ] || need="$$need rapidjson-dev"; \
	  ldconfig -p | grep -q "libpython$$v.so.1.0" || need="$$need libpython$$v"; \
	  $(PYTHON) -c 'import ensurepip' 2>/dev/null || need="$$need python$$v-venv"; \
	  need=$$(echo "$$need" | sed 's/ ninja/ ninja-build/'); \
	  if [ -n "$$need" ]; then echo "installing:$$need"; apt-get update -qq && $(APT) $$need >/dev/null; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# NVIDIA's libtorch backend, built once against this torch and cached (~1 min).
	$(BIN)/python -m serving.pytorch_backend
	touch $@

demo: setup
	$(BIN)/moe serve --classify "$(SAMPLE)"

serve: setup
	$(BIN)/moe serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-unit: setup
	$(BIN)/python -m pytest tests/unit

test-integration: setup
	$(BIN)/python -m pytest tests/integration

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf build build.partial build.old
