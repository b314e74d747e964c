# Two commands on a fresh machine:  make demo  (serve the bundled model, classify a text)
#                                   make test  (lint and the whole test suite, as CI runs it)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE ?= NASA's new telescope spots water vapour on a planet beyond the solar system
APT    := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: setup demo test test-unit test-integration lint format serve clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	@# Build tools of NVIDIA's libtorch backend; the Python backend's stub embeds the system's
	@# libpython of the same version; Debian's docker-compose validates docker-compose.yml in
	@# the tests (there is no Docker engine here); wrk is moe bench's load generator.
	@v=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	  need=""; \
	  for tool in cmake ninja g++ docker-compose wrk; do command -v $$tool >/dev/null || need="$$need $$tool"; done; \
	  [ -f /usr/share/cmake/RapidJSON/RapidJSONConfig.cmake ] || need="$$need rapidjson-dev"; \
	  ldconfig -p | grep -q "libpython$$v.so.1.0" || need="$$need libpython$$v"; \
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
