# The README's two commands: `make demo` (the main job on an embedded default) and `make test`.
# Both install first; torch is pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build)
# before the package.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
export SDL_VIDEODRIVER ?= dummy
# The demo keeps its datasets and runs apart from the user's own.
DEMO_DIR ?= $(CURDIR)/demo_data
DEMO_ENV := MINARI_DATASETS_PATH=$(DEMO_DIR)/datasets

.PHONY: install demo test test-all bench-collect clean

install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[all]"

# From ONE demonstration: DITTO trained inside a world model against behaviour cloning, scored
# from the environment's own start states and from shifted ones the demonstration never visits.
demo: install
	$(DEMO_ENV) wmil build-dataset cartpole-expert --overwrite --quiet
	$(DEMO_ENV) wmil build-dataset cartpole-world --overwrite --quiet
	$(DEMO_ENV) wmil datasets list
	rm -rf $(DEMO_DIR)/runs
	$(DEMO_ENV) wmil train-model --dataset cartpole/world-v0 --model rssm --preset small --steps 1500 \
	    -o batch_size=16 -o seq_len=32 -o eval_every=500 --out $(DEMO_DIR)/runs/cartpole-rssm
	$(DEMO_ENV) wmil evaluate-model $(DEMO_DIR)/runs/cartpole-rssm --expert cartpole/expert-v0
	$(DEMO_ENV) wmil imagine --algo ditto --model $(DEMO_DIR)/runs/cartpole-rssm --expert cartpole/expert-v0 \
	    --expert-episodes 1 --steps 500 -o eval_every=100 --out $(DEMO_DIR)/runs/cartpole-ditto
	$(DEMO_ENV) wmil imagine --algo bc --expert cartpole/expert-v0 --expert-episodes 1 --steps 1000 \
	    --out $(DEMO_DIR)/runs/cartpole-bc --quiet
	$(DEMO_ENV) wmil compare $(DEMO_DIR)/runs/cartpole-ditto $(DEMO_DIR)/runs/cartpole-bc --episodes 20
	$(DEMO_ENV) wmil plot $(DEMO_DIR)/runs/cartpole-ditto

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m "slow or not slow"

bench-collect: install
	$(PYTHON) -m benchmarks.collect

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
