# fruitpipe: `make run` (main job on the bundled sample) and `make test` (whole suite).
# Both create .venv and install from this repository's own files (pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUTPUT ?= fruitpipe-output
PYTEST_ARGS ?=

.PHONY: install java run test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==26.3"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

java:
	@bash scripts/ensure_java.sh

run: install java
	$(VENV)/bin/fruitpipe run --output $(OUTPUT) --overwrite

test: install java
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache
