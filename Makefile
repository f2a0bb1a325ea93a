# Dialtone: the commands a newcomer needs. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit serve bench replay check-deploy clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

## make demo: a whole phone call, locally, against the simulators (no accounts needed)
demo: $(STAMP)
	$(BIN)/python -m service.demo

## make test: lint, type-check and the whole test suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

## make serve: the real server, configured from the environment or .env
serve: $(STAMP)
	$(BIN)/python -m service.serve

## make bench: transcoder and whole-bridge benchmarks
bench: $(STAMP)
	$(BIN)/python -m bench.audio

## make replay: replay the committed call recordings through the call logic
replay: $(STAMP)
	$(BIN)/python -m service.replay fixtures/calls/*.jsonl.gz

## make check-deploy: validate Dockerfile, compose.yaml and infra/k8s (builds the image where Docker runs)
check-deploy: $(STAMP)
	.ci/check-deploy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out
