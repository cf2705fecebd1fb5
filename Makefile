# Set-up and the two commands of the README. Everything lives in .venv; torch is pinned to the
# CPU build that these machines keep on disk (see README, 'Another torch build').
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: run test install install-test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .

install-test: install
	$(BIN)/pip install --quiet -e ".[test]"

# (1) set up and run the main job: train the default model on MNIST, print test accuracy and the report path
run: install
	$(BIN)/digitlab train

# (2) set up the test dependencies and run the whole test suite
test: install-test
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadgroup
	$(BIN)/ruff check .

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
