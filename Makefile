# The whole set-up: `make run` and `make test` each create .venv and install normexp (editable, with
# the dev extra) when pyproject.toml is newer than the last install.
VENV := .venv
PY := $(VENV)/bin/python

# Parallel pytest workers, each test with its own stores, folders and ports. The suite is CPU-bound: on
# the 2-core machine 2 workers took 509 s, 3 took 568 s, 4 took 629 s (contention: more CPU work for the
# same tests) and 1 took 820 s (the waits left a core idle). 3 were still no better in 2026-12's recheck;
# docs/performance.md.
TEST_WORKERS ?= 2

.PHONY: run test answers

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

# The main job: BatchNorm vs no normalization on the embedded digits data, then the comparison.
run: $(VENV)/.installed
	$(PY) -m normexp.train -m experiment=convergence dataset=digits

test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# Every question's preset on Fashion-MNIST over 5 seeds or more, and the stable-LR search; within 120 min on 2 cores; writes docs/answers.md (figures in docs/answers/) and README's summary.
answers: $(VENV)/.installed
	$(PY) -m normexp.answers
