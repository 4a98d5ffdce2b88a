# Two entry points; both do all the set-up a fresh machine needs.
#   make demo   the main job on the built-in tiny EXAONE 4.5 model
#   make test   the test suite
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/llama_patches.sh $(wildcard patches/llama.cpp/*.patch)
	bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV)/bin/python -m pytest -q
