"""The vocabularies of the command-line options, in a module that imports nothing heavy, so that ``--help`` answers
quickly. The modules that implement the options take them from here; the methods' options are declared in the
method modules themselves (``cslg.methods.schema``)."""

TINY_PRESETS = ("tiny-flux", "tiny-sd3", "tiny-sd35", "tiny-qwenimage", "tiny-pixart-sigma")  # Adapter.tiny_presets
OFFLOAD_MODES = ("none", "model", "sequential")
DTYPE_NAMES = ("bf16", "fp16", "fp32")

# step 1: capture
TRAJECTORIES = ("independent", "shared")
SITES = ("block", "attn")  # the block's image-token output / its attention output (the paper's point)
COMPARED = ("cond", "all")  # with CFG: compare the conditional passes / every pass (upstream)

# step 2: analysis
CHANGE_METRICS = ("difference", "relative")
# s_{-1}: the similarity of the blocks' input (default: without it, every drift of the two trajectories is charged
# to the first block) or 1 (the paper).
BASELINES = ("input", "one")

# step 3: grids
LAYER_COMBINATIONS = ("given", "all")

# step 4: OCR
OCR_ENGINES = ("easyocr", "ppocr")
ALL_ENGINES = "all"  # --engine all: every engine, and their agreement
OCR_SCORER = "ocr"  # the --scorers name of the OCR engines, beside the scorers of cslg.scorers
