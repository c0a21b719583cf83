"""Step 2: which blocks carry the feature? Per-block change of the pairs' similarity, a ranking (``ranking``) and
its figures (``plots``); the agreement of several finders' rankings (``agreement``) and layer weights from a ranking
(``weights``)."""

from .agreement import compare_inputs, rank_correlations, ranked_layers, top_k_overlap, write_agreement
from .causal import causal_change
from .ranking import (
    Ranking, analyse, first_difference, layer_change, merge_baselines, merge_captures, per_pair_scores, rank_captures,
    rank_layers, relative_change,
)
from .weights import layer_weights

__all__ = ["Ranking", "analyse", "causal_change", "compare_inputs", "first_difference", "layer_change",
           "layer_weights", "merge_baselines", "merge_captures", "per_pair_scores", "rank_captures", "rank_correlations",
           "rank_layers", "ranked_layers", "relative_change", "top_k_overlap", "write_agreement"]
