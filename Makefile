# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.avlab-installed
# Every pip install goes through constraints.txt, which pins the tested torch/torchvision pair:
# setup.cfg only gives ranges, and an unpinned resolve can pull another multi-GB torch build.
PIP    := $(BIN)/python -m pip install -q -c constraints.txt
DEMO_RUNS := runs/demo
# The main job: Attentive AV-FusionNet, its three deep variants, the weighted product and SVR-8F.
DEMO_EXPERIMENTS := avq/attentive_fusion avq/simple_fusion avq/ca_fusion avq/recursive_fusion \
                    avq/weighted_product avq/weighted_product_fitted avq/svr_8f
PYTEST_ARGS ?=

.PHONY: install demo lint test test-full bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(PIP) torch torchvision
	$(PIP) -e ".[test,postgres]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO_RUNS)
	@for exp in $(DEMO_EXPERIMENTS); do \
	  echo "=== avlab train $$exp"; \
	  $(BIN)/avlab train $$exp run.root=$(DEMO_RUNS) || exit 1; \
	done
	@echo
	@echo "NOTE: the demo MOS is a pseudo-MOS computed from objective measures (VMAF, audio spectral"
	@echo "similarity), not subjective ratings; see avlab/demo/avq.py. Numbers compare models, not papers."
	$(BIN)/avlab compare $(DEMO_RUNS)/avq/*/* --no-config-diff --metrics test/plcc,test/srcc,test/rmse
	@echo "Modality importance of Attentive AV-FusionNet per held-out source (eq. 6-8; alpha=0.7, beta=0.3):"
	@$(BIN)/python -c "import pandas as pd, glob; \
	  t = pd.read_csv(glob.glob('$(DEMO_RUNS)/avq/attentive_fusion/*/modality_importance_by_source.csv')[0], index_col=0); \
	  t['dominant'] = ['audio' if a > v else 'video' for a, v in zip(t.importance_audio, t.importance_video)]; \
	  print(t.round(3).to_string())"
	@ls -d $(DEMO_RUNS)/avq/attentive_fusion/* | sed 's/^/run directory: /'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup --timeout 900 $(PYTEST_ARGS)

test-full: $(STAMP) lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup --timeout 1800 $(PYTEST_ARGS)

bench: $(STAMP)
	@# tf_reader.py is the TensorFlow side of yt8m_reader.py: it runs in .venv-bench, started by that script.
	@for f in $(filter-out bench/tf_reader.py,$(wildcard bench/*.py)); do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
