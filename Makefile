# Parley: `make run` serves the app, `make test` runs the whole suite.
# Both start from nothing but Python 3.11+ and make: the first call builds .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: install run test lint bench bench-quick clean

# llama-cpp-python builds llama.cpp from source, by default for the build machine's own CPU
# (-march=native). On x86-64 it is built for x86-64-v3 instead (AVX2, FMA, F16C, BMI2:
# ggml's defaults once GGML_NATIVE is off): a virtual machine can report CPU features it
# does not let a process use (seen here: AMX listed, so the native build used it, and the
# model's first token died of SIGILL in tileloadd), and a venv can outlive the host it
# was built on. Set CMAKE_ARGS yourself to build otherwise (e.g. -DGGML_NATIVE=ON).
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt bench/peers/requirements.txt pyproject.toml
	@test -x $(BIN)/python || { echo "==> creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "==> installing dependencies (the first time builds llama.cpp from source: ~4 minutes on 2 cores)"
	$(BIN)/python -m pip install --progress-bar on -r requirements-dev.txt
	@echo "==> installing the project itself (parley_client and the parley-chat command)"
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

run: install
	@$(BIN)/python manage.py migrate --noinput
	@$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@$(BIN)/python manage.py bootstrap
	@echo "==> Parley is serving at http://127.0.0.1:$(PORT)/  (Ctrl-C stops it)"
	@$(BIN)/daphne -b 127.0.0.1 -p $(PORT) config.asgi:application

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# BEFORE: the revision measured beside this one (the last before the fan-out rewrite).
BEFORE ?= ef8ce62
bench: install
	$(BIN)/python -m bench.run --before $(BEFORE) --assistants 3 --metrics-cost --out bench/results.json
	$(BIN)/python -m bench.voice --out bench/voice.json
	$(BIN)/python -m bench.model --out bench/model.json
	$(BIN)/python -m bench.actions --out bench/actions.json
	$(BIN)/python -m bench.search --out bench/search.json

# The same scenarios, small (under two minutes): CI runs it to prove it runs, no thresholds.
bench-quick: install
	$(BIN)/python -m bench.run --quick --metrics-cost --out bench/results-quick.json
	$(BIN)/python -m bench.voice --quick --out bench/voice-quick.json
	$(BIN)/python -m bench.model --quick --out bench/model-quick.json
	$(BIN)/python -m bench.actions --quick --out bench/actions-quick.json
	$(BIN)/python -m bench.search --quick --out bench/search-quick.json
