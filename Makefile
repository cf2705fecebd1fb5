# Set-up and the two commands of the README. Everything lives in .venv; torch is pinned to the
# CPU build that these machines keep on disk (see README, 'Another torch build'), every other
# package to the versions in constraints.txt, with which the test suite passed ('make lock' upgrades).
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
BIN         := $(VENV)/bin
PIP         := $(BIN)/pip install --quiet -c $(CONSTRAINTS)

.PHONY: run test install install-test lint lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(PIP) "$(TORCH)"
	$(PIP) -e .

install-test: install
	$(PIP) -e ".[test]"

# Upgrade every dependency to the newest release that pyproject.toml allows (torch stays $(TORCH)) and
# write the versions installed to constraints.txt; then run 'make test' and commit the file if it passes.
lock: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[test]"
	{ echo "# Exact versions the test suite passed with; written by 'make lock' (torch is pinned by the Makefile)."; \
	  $(BIN)/pip freeze --exclude-editable --exclude torch; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

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
