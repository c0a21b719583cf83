"""Step 3: grids of methods x settings x prompts x seeds written to a run folder that step 4 scores. The cells come
from the methods' option declarations (``cells``); ``run`` generates them resumably, sharded; ``naming`` tags and
labels a method's settings; ``contact_sheet`` lays out the images of one prompt and seed."""

from .cells import method_cells
from .naming import method_label, method_tag
from .run import ImageSettings, Job, enumerate_groups, merge_manifests, parse_shard, run_grid, shard_groups

__all__ = ["ImageSettings", "Job", "enumerate_groups", "merge_manifests", "method_cells", "method_label",
           "method_tag", "parse_shard", "run_grid", "shard_groups"]
