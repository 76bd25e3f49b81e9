# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RESULTS ?= results
# parallel test workers (pytest-xdist), one test file per worker at a time: module fixtures run once
TEST_WORKERS ?= 2

.PHONY: venv demo test lint dryrun report clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/local all
	@echo
	@echo "Leaderboard: $(RESULTS)/leaderboard/leaderboard.md (also .csv, .tex)"
	@echo "Figures:     $(RESULTS)/figures/"
	@cat $(RESULTS)/leaderboard/leaderboard.md

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n --profile profiles/slurm all

report: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --report $(RESULTS)/report.html

clean:
	rm -rf $(RESULTS)/* .snakemake
	git checkout -- $(RESULTS)/README.md 2>/dev/null || true
