"""The vocabularies of the command-line options, in a module that imports nothing heavy, so that ``--help`` answers
quickly. The modules that implement the options take them from here; the methods' options are declared in the
method modules themselves (``cslg.methods.schema``)."""

TINY_PRESETS = (  # Adapter.tiny_presets
    "tiny-flux",
    "tiny-sd3",
    "tiny-sd35",
    "tiny-qwenimage",
    "tiny-pixart-sigma",
    "tiny-pixart-alpha",
    "tiny-sana",
    "tiny-zimage",
    "tiny-flux2",
    "tiny-flux2-klein",
    "tiny-chroma",
    "tiny-cogview4",
    "tiny-wan",
    "tiny-wan22",
)
OFFLOAD_MODES = ("none", "model", "sequential")
DTYPE_NAMES = ("bf16", "fp16", "fp32")

# step 1: capture
# contrast: the two prompts' activations per block (correlational); ablation: each block skipped in the positive
# prompt's pass; patching: each block's image-token output taken from the negative prompt's pass (both causal)
FINDERS = ("contrast", "ablation", "patching")
TRAJECTORIES = ("independent", "shared")
SITES = ("block", "attn")  # the block's image-token output / its attention output (the paper's point)
COMPARED = ("cond", "all")  # with CFG: compare the conditional passes / every pass (upstream)

# step 2: analysis
CHANGE_METRICS = ("difference", "relative")
# scores of the causal finders: a measure between the negative prediction n and the perturbed positive p_l
# (distance ‖n - p_l‖₂, cosine cos(n, p_l)), raw or normalised by the unperturbed reference p (ratio, difference);
# "-drop": its first difference along depth, from the unperturbed value
CAUSAL_SCORES = tuple(f"{measure}{norm}{along}" for measure in ("distance", "cosine")
                      for norm in ("-ratio", "-difference", "") for along in ("", "-drop"))
DEFAULT_SCORES = {"ablation": "distance-ratio", "patching": "distance-ratio-drop"}
# s_{-1}: the similarity of the blocks' input (default: without it, every drift of the two trajectories is charged
# to the first block) or 1 (the paper).
BASELINES = ("input", "one")

# step 3: grids
LAYER_COMBINATIONS = ("given", "all")
# how a skip method combines the top-k layers of a ranking (upstream's names: stg, msg_naive, msg_fixed, msg_weighted):
# the top layer alone, all skipped in one pass, the uniform / weighted mean of per-layer skipped passes
LAYER_VARIANTS = ("single", "joint", "uniform", "weighted")

# step 4: OCR
OCR_ENGINES = ("easyocr", "ppocr")
ALL_ENGINES = "all"  # --engine all: every engine, and their agreement
OCR_SCORER = "ocr"  # the --scorers name of the OCR engines, beside the scorers of cslg.scorers
