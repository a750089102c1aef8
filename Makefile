SHELL := /bin/bash
# Two commands do all the set-up on a fresh machine (see README):
#   make demo   -> .venv + install + `recsys quickstart`
#   make test   -> .venv + install + Redis on 127.0.0.1:6379 + pytest (Kafka broker comes from a pytest fixture)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# pip.conf on these machines lists local index folders that may not exist: silence only those warnings.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench-synth redis clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements/lock.txt requirements/dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# --no-deps: the lock is the full transitive set (torch CPU wheel, torchrec without the CUDA fbgemm-gpu)
	set -o pipefail; $(PIP) install -q --no-deps -r requirements/lock.txt -r requirements/dev.txt $(QUIET_PIP)
	set -o pipefail; $(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET_PIP)
	$(BIN)/python -c "import torch, torchrec, polars, mlflow, faiss, kafka, redis, fastapi; print('install ok: torch', torch.__version__, 'torchrec', torchrec.__version__)"
	touch $@

demo: install
	$(BIN)/recsys quickstart

redis:
	bash scripts/ensure_redis.sh

test: install redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not kafka and not redis and not slow" $(PYTEST_ARGS)

bench-synth: install
	$(BIN)/recsys bench synth --scale full --out benchmarks/results/synth-full.json

clean:
	rm -rf $(VENV) .pytest_cache
