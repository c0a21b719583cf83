"""Step 2: which blocks carry the feature? Per-block change of the pairs' similarity, a ranking (``ranking``) and
its figures (``plots``)."""

from .causal import causal_change
from .ranking import (
    Ranking, analyse, first_difference, layer_change, merge_baselines, merge_captures, per_pair_scores, rank_captures,
    rank_layers, relative_change,
)

__all__ = ["Ranking", "analyse", "causal_change", "first_difference", "layer_change", "merge_baselines",
           "merge_captures", "per_pair_scores", "rank_captures", "rank_layers", "relative_change"]
