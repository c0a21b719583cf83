"""The vocabularies of the command-line options, in a module that imports nothing heavy, so that ``--help`` answers
at once. The modules that implement the options take them from here."""

TINY_PRESETS = ("tiny-flux", "tiny-sd3", "tiny-sd35", "tiny-qwenimage", "tiny-pixart-sigma")
OFFLOAD_MODES = ("none", "model", "sequential")
DTYPE_NAMES = ("bf16", "fp16", "fp32")

# step 1: capture
TRAJECTORIES = ("independent", "shared")
SITES = ("block", "attn")  # the block's image-token output / its attention output (the paper's point)
ROWS = ("cond", "all")  # with CFG: the conditional rows / every row (upstream)

# step 2: analysis
METRICS = ("difference", "relative")
# s_{-1}: the similarity of the blocks' input (default: without it, every drift of the two trajectories is charged
# to the first block) or 1 (the paper).
BASELINES = ("input", "one")

# step 4: OCR
ENGINE_NAMES = ("easyocr", "ppocr")
ALL_ENGINES = "all"  # --engine all: every engine, and their agreement

# step 3: grids
METHOD_NAMES = ("none", "cfg", "slg", "cslg", "scfg", "concept", "pag", "apg", "cfgzero", "slg-neg")  # the registry's
LAYER_COMBINATIONS = ("given", "all")
# diffusers' StableDiffusion3Pipeline defaults for skip-layer guidance (SD3.5-medium recipe).
SLG_LAYERS = ("7", "8", "9")
SLG_SCALE = 2.8
SLG_START = 0.01
SLG_STOP = 0.2
