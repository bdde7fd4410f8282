# make demo | make test | make bench: each bootstraps .venv idempotently.
#
# TORCH: what to install for torch. The default pins the CPU build that a plain
# CPU machine should use (an unpinned torch pulls a multi-GB CUDA build).
# On a GPU machine, keep the CUDA torch you already have with
#     make test TORCH=keep
# which creates the venv with --system-site-packages and installs no torch.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ilt-installed

.PHONY: install sysdeps test test-distributed demo bench reliability mutation clean-venv

install: $(STAMP)

$(STAMP): setup.py
	@if [ "$(TORCH)" = "keep" ]; then \
	    test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	    test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	    $(BIN)/python -m pip install -q --upgrade pip; \
	    $(BIN)/python -m pip install -q "$(TORCH)"; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev,models,export,speaker,track2]'
	@touch $@

sysdeps:
	@bash tools/install_sysdeps.sh

test: install sysdeps
	$(BIN)/ilt config check $(wildcard egs/*/conf/*.yaml egs/*/conf/*/*.yaml egs/*/conf_*/*.yaml)
	@# two workers (2 cores), one test file each at a time, one torch thread each: most tests are
	@# single-threaded Python and subprocess start-up; a file's module fixtures stay in one worker
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# every test that launches several processes (gloo on CPU), the slow ones included: the recipe's
# rounds on 2 processes with the FSDP config (docs/scale.md), training and decoding equivalence
test-distributed: install
	ILT_RELIABILITY=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m two_processes tests/test_recipe_template.py \
	    tests/test_two_processes.py

demo: install sysdeps
	cd egs/mini && PATH=$(abspath $(BIN)):$$PATH bash run.sh
	@echo "Report page: $(abspath egs/mini/exp/report/report_test.html)"

bench: install sysdeps
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/decode_throughput.py
	$(BIN)/python bench/precision_load.py

# the full reliability suite (kill anywhere, bad input, two processes): docs/reliability.md
reliability: install sysdeps
	$(BIN)/python tools/reliability.py

# mutation testing (mutmut 3.8.1) of scoring, voters, text normalisation, checkpoint choice, merge, mix and decoding, each against its
# own tests (setup.cfg [mutmut]); not part of `make test`. A fresh run in ./mutants/ (git-ignored), one
# worker at the lowest priority; results: docs/reliability.md, "Mutation testing".
mutation: install
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/python -m pip install -q mutmut==3.8.1
	rm -rf mutants
	nice -n 19 env OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 1
	$(BIN)/mutmut results

clean-venv:
	rm -rf $(VENV)
