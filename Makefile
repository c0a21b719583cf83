# `make demo`: create .venv, install, and run steps 1-4 on the built-in tiny models (CPU, offline).
# `make test`: same environment, run the test suite.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_outputs
# Tiny-model settings of the demo: small images and few steps; the demo takes about 3 minutes on 2 cores after
# the install (measured: 2 min 46 s on a quiet machine).
DEMO_SIZE := --height 64 --width 64 --steps 6 --max-sequence-length 128

# `make paper`: the paper's SD3 table (GPU, real weights); `make paper MODEL=tiny-sd3`: the same recipe on the tiny model.
MODEL ?= stabilityai/stable-diffusion-3-medium-diffusers
PAPER_OUT ?= outputs/paper
PAPER_TINY := --steps 6 --size 64 --max-sequence-length 64 --seeds 0,42 --limit 2 --upstream-sets "0;1;0,1" --offset 2

.PHONY: install test demo demo-all paper benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	@echo "== step 1: capture activations of prompt pairs (tiny FLUX and tiny SD3.5) =="
	$(PY) FLUX_LayerExperiment_pairwise.py --model tiny-flux --pairs 4 $(DEMO_SIZE) --out $(DEMO_OUT)/flux_capture.safetensors --save-activations s0
	$(PY) SD3_LayerExperiment_pairwise.py --model tiny-sd35 --pairs 8 $(DEMO_SIZE) --out $(DEMO_OUT)/sd35_capture.safetensors
	$(PY) FLUX_LayerExperiment_pairwise.py --model tiny-flux --pairs 4 $(DEMO_SIZE) --finder ablation --out $(DEMO_OUT)/flux_ablation.safetensors
	@echo "== step 2: contrastive analysis and layer ranking =="
	$(PY) visualize.py $(DEMO_OUT)/flux_capture.safetensors --out $(DEMO_OUT)/flux_analysis --dpi 100
	$(PY) visualize.py $(DEMO_OUT)/sd35_capture.safetensors --out $(DEMO_OUT)/sd35_analysis --dpi 100
	$(PY) visualize.py $(DEMO_OUT)/flux_ablation.safetensors --out $(DEMO_OUT)/flux_ablation_analysis --dpi 100
	@echo "== do the contrast and ablation finders agree on the same pairs? =="
	$(PY) visualize.py $(DEMO_OUT)/flux_capture.safetensors $(DEMO_OUT)/flux_ablation.safetensors --out $(DEMO_OUT)/flux_compare --dpi 100
	@echo "== step 3: final-experiment grids with the layers from step 2 =="
	$(PY) FLUX_final_experiments.py --model tiny-flux --limit 3 --seeds 0,1 $(DEMO_SIZE) \
		--methods none cfg cslg scfg concept --cfg-scales 1,3.5 --cslg-scales 1,2 \
		--layers-from $(DEMO_OUT)/flux_analysis/layers.json --top-k 2 --out $(DEMO_OUT)/flux_run
	$(PY) SD3_final_experiments.py --model tiny-sd35 --limit 3 --seeds 0,1 $(DEMO_SIZE) \
		--methods none cfg slg cslg scfg concept pag slg-neg --slg-layers 3 4 \
		--layers-from $(DEMO_OUT)/sd35_analysis/layers.json --top-k 2 --out $(DEMO_OUT)/sd35_run
	@echo "== the same workflow with the cslg command on the other families, with the field's methods =="
	for fam in qwenimage pixart-sigma; do \
		$(PY) -m cslg capture --model tiny-$$fam --pairs 3 $(DEMO_SIZE) --out $(DEMO_OUT)/$${fam}_capture.safetensors && \
		$(PY) -m cslg analyse $(DEMO_OUT)/$${fam}_capture.safetensors --out $(DEMO_OUT)/$${fam}_analysis --dpi 100 && \
		$(PY) -m cslg grid --model tiny-$$fam --limit 1 --seeds 0 $(DEMO_SIZE) --cfg-scales 4 \
			--methods none cfg cslg pag apg cfgzero slg-neg scfg concept --cslg-scales 2 --pag-scales 2 \
			--layers-from $(DEMO_OUT)/$${fam}_analysis/layers.json --top-k 1 --out $(DEMO_OUT)/$${fam}_run || exit 1; \
	done
	@echo "== step 4: OCR evaluation (first a known-text check: rendered expected text must score near 1) =="
	$(PY) -m cslg.evaluation.known_text --limit 5 --out $(DEMO_OUT)/ocr_check
	$(PY) eval.py --images $(DEMO_OUT)/ocr_check --prompts prompt_datasets/text_eval_prompts.json
	$(PY) eval.py --run $(DEMO_OUT)/flux_run
	@echo "== scorers on tiny random weights (their values exercise the code): CLIP score next to OCR, paired.csv against cfg, scale and trade-off plots =="
	$(PY) -m cslg.scorers.tiny --out $(DEMO_OUT)/tiny_scorers clip > $(DEMO_OUT)/tiny_scorer_flags
	$(PY) eval.py --run $(DEMO_OUT)/sd35_run --scorers ocr clip $$(cat $(DEMO_OUT)/tiny_scorer_flags) --tradeoff ocr clip
	@echo "== a feature other than text: layers of the hands pairs, a grid of hand prompts, CLIP and aesthetic scores =="
	$(PY) -m cslg capture --model tiny-sd3 --prompts prompt_datasets/hands_pairs.json --pairs 3 $(DEMO_SIZE) --out $(DEMO_OUT)/hands_capture.safetensors
	$(PY) -m cslg analyse $(DEMO_OUT)/hands_capture.safetensors --out $(DEMO_OUT)/hands_analysis --dpi 100
	$(PY) -m cslg grid --model tiny-sd3 --prompts prompt_datasets/hands_eval_prompts.json --limit 2 --seeds 0,1 $(DEMO_SIZE) \
		--methods none cfg cslg --cslg-scales 2 --layers-from $(DEMO_OUT)/hands_analysis/layers.json --top-k 1 --out $(DEMO_OUT)/hands_run
	$(PY) -m cslg.scorers.tiny --out $(DEMO_OUT)/tiny_scorers clip aesthetic-v1 > $(DEMO_OUT)/tiny_scorer_flags_hands
	$(PY) -m cslg eval --run $(DEMO_OUT)/hands_run --scorers clip aesthetic-v1 $$(cat $(DEMO_OUT)/tiny_scorer_flags_hands) --tradeoff clip aesthetic-v1
	$(PY) -m cslg eval --run $(DEMO_OUT)/qwenimage_run
	$(PY) -m cslg eval --run $(DEMO_OUT)/pixart-sigma_run
	@echo "demo outputs: $(DEMO_OUT)/ (captures, *_analysis/layers.json and figures, *_run/contact_sheets, *_run/eval)"

# `make demo-all`: steps 1-4 with the cslg command on the tiny presets of the families beyond the demo's (CPU, offline;
# measured: about 7 minutes on 2 shared cores for the four defaults: FLUX.2 2.5, Klein 2.3, Chroma 1.4, CogView4 0.7).
DEMO_ALL_FAMILIES ?= flux2 flux2-klein chroma cogview4 pixart-alpha sana zimage

demo-all: install
	for fam in $(DEMO_ALL_FAMILIES); do \
		$(PY) -m cslg capture --model tiny-$$fam --pairs 3 $(DEMO_SIZE) --out $(DEMO_OUT)/$${fam}_capture.safetensors && \
		$(PY) -m cslg analyse $(DEMO_OUT)/$${fam}_capture.safetensors --out $(DEMO_OUT)/$${fam}_analysis --dpi 100 && \
		$(PY) -m cslg grid --model tiny-$$fam --limit 1 --seeds 0 $(DEMO_SIZE) --cfg-scales 4 \
			--methods none cfg cslg pag apg cfgzero slg-neg scfg concept --cslg-scales 2 --pag-scales 2 \
			--layers-from $(DEMO_OUT)/$${fam}_analysis/layers.json --top-k 1 --out $(DEMO_OUT)/$${fam}_run && \
		$(PY) -m cslg eval --run $(DEMO_OUT)/$${fam}_run || exit 1; \
	done

paper: install
	$(PY) -m cslg paper --model $(MODEL) --out $(PAPER_OUT) $(if $(filter tiny-%,$(MODEL)),$(PAPER_TINY))

benchmarks: install
	$(PY) benchmarks/bench_capture.py
	$(PY) benchmarks/bench_guidance.py
	$(PY) benchmarks/bench_baselines.py
	$(PY) benchmarks/bench_methods.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
