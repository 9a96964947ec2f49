# Every target stops at the first error. `make demo` and `make test` install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN := runs/quickstart
METHODS := fine tracin grad-cos loss
# One torch thread per process: two processes spinning 2 threads each on 2 cores crawl.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo experiment test lint format bench bench-gpu clean

install: $(BIN)/fine

$(BIN)/fine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,llm]"
	@touch $@

demo: install
	@mkdir -p $(RUN)
	$(BIN)/fine train-collect configs/quickstart.yaml -o $(RUN)/signals.npz
	@for m in $(METHODS); do \
	  $(BIN)/fine estimate $(RUN)/signals.npz --method $$m -o $(RUN)/influence-$$m.npz && \
	  $(BIN)/fine rank $(RUN)/influence-$$m.npz --top 5 -o $(RUN)/ranking-$$m.npz > /dev/null \
	  || exit 1; \
	done
	$(BIN)/fine evaluate recall $(addprefix $(RUN)/ranking-,$(addsuffix .npz,$(METHODS))) \
	  --plot $(RUN)/recall.png

# The paper's Fig. 6, 2 and 8 on the embedded MNIST: 3 seeds, every method (minutes).
experiment: install
	$(BIN)/fine run configs/mislabel_recall.yaml

test: install
	$(BIN)/python -m pytest

LINTED := fine_cli tests benchmarks scripts examples

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy fine_cli

format: install
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

# CPU rows, the out-of-core rows (2,000,000 points), and the GPU rows where CUDA is present;
# every row repeated (median [min - max]); under 10 minutes on 2 idle cores. Run it alone.
bench: install
	$(BIN)/python benchmarks/bench.py

# The GPU rows only: CIFAR ResNet-18 config throughput and collection ratio, the MNIST ratio.
bench-gpu: install
	$(BIN)/python benchmarks/bench.py --gpu

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
