# Two commands do everything on a fresh machine:  make run   and   make test
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: run test test-all bench data setup clean docs docs-serve

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch that lies on this machine's disk; a plain `torch` pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST from Debian (used by tests and benches; the default run needs nothing)
data:
	@test -f $(FASHION)/train-images-idx3-ubyte.gz || \
	  { command -v apt-get >/dev/null && (apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) || \
	    echo "note: dataset-fashion-mnist not installed; tests that need it are skipped"; }

run: $(STAMP)
	$(BIN)/python -m dimat $(ARGS)

test: $(STAMP) data
	$(BIN)/python -m pytest -q

test-all: $(STAMP) data
	$(BIN)/python -m pytest -q -m ''

# the documentation site (mkdocs-material + mkdocstrings): strict, so a broken link or reference fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

bench: $(STAMP) data
	$(BIN)/python bench/backends.py

clean:
	rm -rf outputs multirun site
