# CallPulse. Quickstart: `make demo` (main job), `make test` (test suite). Both install what is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GENERATED := agentassist/v1/agent_assist_pb2.py
# torch is installed on its own first so that the dependency resolver never picks another build.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu gives the small CPU-only wheel on machines that can reach it.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
MODEL_DIR ?= models/emotion2vec_plus_large
MODEL_ID ?= iic/emotion2vec_plus_large
HUB ?= ms

SIZE ?= base
GPU_SIZE ?= large
BENCH_GPU_OUT ?= .bench/bench_gpu.json
BENCH_GPU_ARGS ?=

CALLS ?= 20
MINUTES ?= 10
FUZZ_EXAMPLES ?= 2000

.PHONY: help sysdeps install proto test demo bench bench-gpu soak fuzz model serve clean

help:
	@echo "make demo   - start redis (if needed) + the service, stream the sample call, print the alerts"
	@echo "make test   - run the test suite"
	@echo "make bench  - ceiling, naive peer and this service under load, one run (SIZE=base|large|tiny)"
	@echo "make bench-gpu - on a GPU machine: ceiling (bf16/fp16/fp32, eager and CUDA graphs), naive peer, service ladder -> one JSON"
	@echo "make soak   - CALLS live calls for MINUTES minutes; RSS and open-file slopes (not in CI)"
	@echo "make fuzz   - the property-based fuzz tests with FUZZ_EXAMPLES examples each (CI runs 150)"
	@echo "make model  - download $(MODEL_ID) into $(MODEL_DIR) (needs a reachable model hub)"
	@echo "make serve  - run the service in the foreground (CALLPULSE_* variables configure it)"

sysdeps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

$(GENERATED): proto/agentassist/v1/agent_assist.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $<
	touch agentassist/__init__.py agentassist/v1/__init__.py

proto: $(GENERATED)

test: sysdeps proto
	$(PY) -m pytest -q

demo: sysdeps proto
	$(PY) -m clients.demo --model $(MODEL_DIR)

bench: sysdeps proto
	$(PY) -m clients.bench --size $(SIZE)

# No install step: a GPU machine runs it with its own python (`make bench-gpu PY=python3`, README "GPU benchmark").
bench-gpu:
	$(PY) -m clients.bench_gpu --size $(GPU_SIZE) --out $(BENCH_GPU_OUT) $(BENCH_GPU_ARGS)

soak: sysdeps proto
	$(PY) -m clients.soak --calls $(CALLS) --minutes $(MINUTES)

fuzz: sysdeps proto
	CALLPULSE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_fuzz.py

model: proto
	$(PY) -m service download-model $(MODEL_ID) --out $(MODEL_DIR) --hub $(HUB)

serve: proto
	$(PY) -m service serve

clean:
	rm -rf $(VENV) agentassist .pytest_cache
