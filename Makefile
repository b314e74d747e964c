# Two commands on a fresh machine:  make demo  (serve the bundled model, classify a text)
#                                   make test  (the whole test suite, as CI runs it)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE ?= NASA's new telescope spots water vapour on a planet beyond the solar system

.PHONY: setup demo test serve clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./client -e '.[test]'
	@# The Python backend's stub embeds the system's libpython of the same version.
	@v=$$($(BIN)/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	  ldconfig -p | grep -q "libpython$$v.so.1.0" || \
	  (apt-get update -qq && apt-get install -y -qq "libpython$$v" >/dev/null)
	@# Debian's docker-compose validates docker-compose.yml in the tests (no Docker engine here).
	@command -v docker-compose >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)
	touch $@

demo: setup
	$(BIN)/moe serve --classify "$(SAMPLE)"

serve: setup
	$(BIN)/moe serve

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf build build.partial build.old
