"""CSLG layer weights from a ranking (``--layer-weights-from layers.json``).

The ``k`` best-ranked layers get weights proportional to how far their score lies on the good side of the
ranking's *neutral* score (the score of a block that changes nothing: ``neutral`` in ``layers.json``, 0 when
absent, as for ``contrast``'s change metrics), normalised to sum to 1:

    g_k = max(0, neutral - score_k)  (lower is better)   or   max(0, score_k - neutral)  (higher is better)
    a_k = g_k / Σ_j g_j

E.g. ``contrast`` changes ``-0.3, -0.2, -0.1`` give ``0.5, 0.333, 0.167``; ``ablation`` distance ratios
``0.52, 0.67, 0.70`` (neutral 1) give gains ``0.48, 0.33, 0.30``, the shape of upstream's configured weights. CSLG
divides by ``Σ a_k`` (``c_skip = Σ a_k c_skip(k) / Σ a_k``), so any positive multiple of the weights guides alike.
"""

from __future__ import annotations

from .agreement import ranked_layers

ROUND = 6  # decimals kept: the weights are part of a cell's settings (its file name digest)


def gains(scores: list[float], ascending: bool, neutral: float = 0.0) -> list[float]:
    """``g_k``: each score's distance from ``neutral`` on the good side of the ranking, 0 on the other side."""
    return [max(0.0, (neutral - s) if ascending else (s - neutral)) for s in scores]


def layer_weights(data: dict, k: int, source: str = "layers.json") -> tuple[list[str], list[float]]:
    """The ``k`` best layers of a ``layers.json`` content and their weights ``a_k`` (summing to 1); ``ValueError``
    naming ``source`` when there are fewer than ``k`` layers or none of them scores better than neutral."""
    ranking = ranked_layers(data, source=source)
    if not 1 <= k <= len(ranking.layers):
        raise ValueError(f"--top-k {k}: {source} ranks {len(ranking.layers)} layer(s)")
    top = list(ranking.layers[:k])
    g = gains([ranking.scores[layer] for layer in top], ranking.ascending, ranking.neutral)
    total = sum(g)
    if total <= 0:
        raise ValueError(f"{source}: none of the top-{k} layers scores better than the neutral score "
                         f"{ranking.neutral:g} "
                         "(set 'neutral' in the file to the score of a block that changes nothing)")
    return top, [round(x / total, ROUND) for x in g]
