# The pipeline's commands. `make sft rm ppo` runs the offline demo; `make test` runs the tests.
# The first target that needs it creates .venv with the pinned, tested versions (constraints.txt).

PYTHON ?= python3
RUN ?= demo
PRESET ?= demo
NPROC ?= 1
ACCELERATE_CONFIG ?=
ARGS ?=
PYTEST_ARGS ?=

VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_DATA := data/demo/prefs_train.jsonl
TINY_BASE := build/tiny-base/config.json

export HF_HUB_DISABLE_TELEMETRY := 1
export PYTHONUNBUFFERED := 1
ifeq ($(PRESET),demo)
export HF_HUB_OFFLINE := 1
endif

ifeq ($(ACCELERATE_CONFIG),)
LAUNCH_FLAGS := --num_processes $(NPROC) --num_machines 1 --mixed_precision no --dynamo_backend no \
	$(if $(filter-out 1,$(NPROC)),--multi_gpu)
else
LAUNCH_FLAGS := --config_file $(ACCELERATE_CONFIG) $(if $(filter-out 1,$(NPROC)),--num_processes $(NPROC))
endif
# accelerate launch, but bad input ends with the stage's message and exit code 2 (pipeline/launch.py)
LAUNCH := $(BIN)/python -m pipeline.launch $(LAUNCH_FLAGS)
DEMO_INPUTS := $(if $(filter demo,$(PRESET)),$(DEMO_DATA) $(TINY_BASE))

.PHONY: help venv data base sft rm ppo prompt-opt prompt-opt-seeds prompt-edit eval report results export test test-fast \
	bench lint clean

help:
	@echo "make sft rm ppo    run the pipeline (RUN=$(RUN), PRESET=$(PRESET); NPROC, ACCELERATE_CONFIG, ARGS pass through)"
	@echo "make test          run the test suite (slow end-to-end runs included)"
	@echo "make prompt-opt    learn a classification prompt with PPO and with soft Q-learning (RLPrompt; RUN, RUN-sql)"
	@echo "make prompt-edit   train a policy that edits the prompt per query (TEMPERA) on the same demo task"
	@echo "make eval          compare the SFT and PPO policies of run RUN on held-out prompts (win rates, KL, ...)"
	@echo "make report        write runs/RUN/report.html (and, with Chromium installed, a screenshot of it)"
	@echo "make results       write docs/RESULTS.md: the measured results of run RUN with the commands behind them"
	@echo "make export        write the PPO policy of run RUN as a plain model with a model card to runs/RUN/export"
	@echo "make bench         compare our PPO with trl 1.12.0's PPOTrainer (speed, memory, score at matched KL)"

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

data: $(DEMO_DATA)

$(DEMO_DATA): | $(INSTALLED)
	$(BIN)/python -m data.generate --out data/demo

base: $(TINY_BASE)

$(TINY_BASE): | $(INSTALLED) $(DEMO_DATA)
	$(BIN)/python -m pipeline.tiny_base --data data/demo --out build/tiny-base

sft: $(INSTALLED) $(DEMO_INPUTS)
	$(LAUNCH) -m stages.sft --config configs/$(PRESET)/sft.yaml --run $(RUN) $(ARGS)

rm: $(INSTALLED) $(DEMO_INPUTS)
	$(LAUNCH) -m stages.rm --config configs/$(PRESET)/rm.yaml --run $(RUN) $(ARGS)

ppo: $(INSTALLED) $(DEMO_INPUTS)
	$(LAUNCH) -m stages.ppo --config configs/$(PRESET)/ppo.yaml --run $(RUN) $(ARGS)

# RLPrompt on the demo: PPO in runs/RUN/prompt_opt, soft Q-learning in runs/RUN-sql/prompt_opt, side by side.
prompt-opt: $(INSTALLED) $(DEMO_INPUTS)
	$(LAUNCH) -m stages.prompt_opt --config configs/$(PRESET)/prompt_opt.yaml --run $(RUN) $(ARGS)
	$(LAUNCH) -m stages.prompt_opt --config configs/$(PRESET)/prompt_opt.yaml --run $(RUN)-sql --algorithm sql $(ARGS)
	$(BIN)/python -m stages.prompt_opt.compare --runs $(RUN) $(RUN)-sql

# The prompt-optimization evidence: both algorithms on SEEDS, compared in runs/prompt-opt-seeds.md.
SEEDS ?= 0 1 2
prompt-opt-seeds: $(INSTALLED) $(DEMO_INPUTS)
	for seed in $(SEEDS); do \
		$(LAUNCH) -m stages.prompt_opt --config configs/$(PRESET)/prompt_opt.yaml --run po-ppo-$$seed --seed $$seed $(ARGS) && \
		$(LAUNCH) -m stages.prompt_opt --config configs/$(PRESET)/prompt_opt.yaml --run po-sql-$$seed --seed $$seed \
			--algorithm sql $(ARGS) || exit $$?; \
	done
	$(BIN)/python -m stages.prompt_opt.compare --out runs/prompt-opt-seeds.md \
		--runs $(foreach seed,$(SEEDS),po-ppo-$(seed) po-sql-$(seed))

prompt-edit: $(INSTALLED) $(DEMO_INPUTS)
	$(LAUNCH) -m stages.prompt_edit --config configs/$(PRESET)/prompt_edit.yaml --run $(RUN) $(ARGS)

eval: $(INSTALLED)
	$(BIN)/python -m stages.eval --run $(RUN) $(ARGS)

report: $(INSTALLED)
	$(BIN)/python -m pipeline.cli report --run $(RUN) --screenshot

results: $(INSTALLED)
	$(BIN)/python -m pipeline.cli results --run $(RUN)

export: $(INSTALLED)
	$(BIN)/python -m pipeline.cli export --run $(RUN) $(ARGS)

test: $(INSTALLED) $(DEMO_DATA)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(INSTALLED) $(DEMO_DATA)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(INSTALLED) $(DEMO_INPUTS)
	$(BIN)/python -m bench.compare $(ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf runs build
