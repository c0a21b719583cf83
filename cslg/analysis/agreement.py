"""Agreement of layer rankings: do several finders (``contrast``, ``ablation``, ``patching``) over the same prompt
pairs pick the same blocks?

Each ranking is a ``layers.json`` (rows ``layer``, ``score``, ``spread`` / ``std``, best first). A finder's score may
be "lower is better" (``contrast``: the most negative change; ``ablation``: the smallest distance ratio) or "higher is
better"; the direction is read from the order of the rows, and every score is *oriented* (negated for a descending
ranking) so that lower means more feature-carrying before anything is compared.

For two rankings over the ``n`` layers they share:

- Spearman's ``ρ = 1 - 6 Σ d_i² / (n (n² - 1))`` (``d_i``: the difference of layer ``i``'s ranks; ties take mean
  ranks), ``scipy.stats.spearmanr``;
- Kendall's ``τ_b = (C - D) / sqrt((C + D + T_a) (C + D + T_b))`` over layer pairs (``C`` concordant, ``D``
  discordant, ``T``: ties in one ranking only), ``scipy.stats.kendalltau``;
- top-k overlap ``|top_k(A) ∩ top_k(B)| / k``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import textwrap
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from ..io import atomic_write_json
from .plots import MEAN_COLOR, SUGGESTED_COLOR, TITLE_WIDTH, _mark_block_groups, save_figure

DEFAULT_FINDER = "contrast"  # what a capture or layers.json without a "finder" key was made with


@dataclass(frozen=True)
class RankedLayers:
    """One finder's ranking: ``layers`` best first, the score and spread of each layer, where it came from."""

    label: str
    finder: str
    layers: tuple[str, ...]
    scores: dict[str, float]
    spread: dict[str, float]
    ascending: bool  # lower score = better
    source: str = ""
    neutral: float = 0.0  # the score of a block that changes nothing

    def oriented(self, layer: str) -> float:
        """The layer's score with lower = better, whatever the finder's direction."""
        return self.scores[layer] if self.ascending else -self.scores[layer]

    def top(self, k: int, among: Sequence[str] | None = None) -> list[str]:
        """The ``k`` best layers (of ``among``, when given)."""
        keep = set(self.layers if among is None else among)
        return [layer for layer in self.layers if layer in keep][:k]


def pairs_digest(prompts: Sequence[Sequence[str]]) -> str:
    """A digest of the prompt pairs behind a ranking, independent of their order (pooled captures may come in any
    order): the first 12 hex digits of the SHA-1 of the sorted ``[negative, positive]`` list as JSON."""
    return hashlib.sha1(json.dumps(sorted([list(p) for p in prompts])).encode()).hexdigest()[:12]


def ranked_layers(data: dict, label: str | None = None, source: str = "") -> RankedLayers:
    """The ranking of a ``layers.json`` content; ``ValueError`` naming ``source`` when it is not one."""
    where = source or "layers.json"
    rows = data.get("ranking") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: no 'ranking' rows; not a layers.json written by cslg analyse")
    layers, scores, spread = [], {}, {}
    for i, row in enumerate(rows, start=1):
        layer, score = (row.get("layer"), row.get("score")) if isinstance(row, dict) else (None, None)
        if not isinstance(layer, str) or isinstance(score, bool) or not isinstance(score, (int, float)) \
                or not math.isfinite(score):
            raise ValueError(f"{where}: ranking row {i} needs a layer name and a finite score, got {row!r}")
        if layer in scores:
            raise ValueError(f"{where}: layer {layer!r} is ranked twice")
        layers.append(layer)
        scores[layer] = float(score)
        spread[layer] = float(row.get("spread", row.get("std", 0.0)) or 0.0)
    values = [scores[layer] for layer in layers]
    ascending = all(a <= b for a, b in zip(values, values[1:]))
    if not ascending and not all(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"{where}: the ranking rows are not sorted by score (best first)")
    neutral = data.get("neutral", 0.0)
    if isinstance(neutral, bool) or not isinstance(neutral, (int, float)) or not math.isfinite(neutral):
        raise ValueError(f"{where}: 'neutral' must be a finite number, got {neutral!r}")
    finder = data.get("finder", DEFAULT_FINDER)
    return RankedLayers(label or finder, finder, tuple(layers), scores, spread, ascending, source, float(neutral))


def check_comparable(entries: Sequence[tuple[str, dict]]) -> list[str]:
    """Refuse (``ValueError``, one line naming both files) rankings of different models or prompt pairs. ``entries``:
    ``(source, layers.json content)``. Returns notes on what could not be checked (no ``pairs_sha1``)."""
    (first_source, first), notes = entries[0], []
    for source, data in entries[1:]:
        for key in ("family", "model", "pairs"):
            if key in data and key in first and data[key] != first[key]:
                raise ValueError(f"{source}: {key} {data[key]!r} differs from {first_source} ({first[key]!r}); "
                                 "only rankings of the same model over the same pairs can be compared")
        ours, theirs = first.get("pairs_sha1"), data.get("pairs_sha1")
        if ours and theirs and ours != theirs:
            raise ValueError(f"{source}: its prompt pairs differ from those of {first_source} (pairs_sha1 {theirs} "
                             f"vs {ours}); only rankings over the same pairs can be compared")
        if not (ours and theirs):
            notes.append(f"{source} or {first_source} records no pairs_sha1: only the pair count was compared")
    return notes


def rank_correlations(a: RankedLayers, b: RankedLayers, layers: Sequence[str]) -> dict[str, float | None]:
    """Spearman's ρ and Kendall's τ_b (with their two-sided p-values) of the oriented scores of ``layers``; ``None``
    where undefined (a constant ranking; the p-value of ρ on two layers)."""
    from scipy.stats import kendalltau, spearmanr

    x, y = [a.oriented(layer) for layer in layers], [b.oriented(layer) for layer in layers]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return {"spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    rho, tau = spearmanr(x, y), kendalltau(x, y)
    values = {"spearman": rho.statistic, "spearman_p": rho.pvalue, "kendall": tau.statistic, "kendall_p": tau.pvalue}
    return {key: float(v) if math.isfinite(v) else None for key, v in values.items()}  # scipy: NaN p for n = 2


def top_k_overlap(a: RankedLayers, b: RankedLayers, k: int, among: Sequence[str] | None = None) -> dict:
    """How many of the ``k`` best layers (of ``among``) the two rankings share: count, fraction of ``k``, the
    layers (in ``a``'s order)."""
    if k < 1:
        raise ValueError(f"--top-k must be at least 1, got {k}")
    top_a, top_b = a.top(k, among), set(b.top(k, among))
    shared = [layer for layer in top_a if layer in top_b]
    k = min(k, len(top_a))
    return {"k": k, "shared": shared, "count": len(shared), "fraction": len(shared) / k}


def common_layers(rankings: Sequence[RankedLayers], order: Sequence[str] | None = None) -> list[str]:
    """The layers every ranking ranks, in ``order`` (a model's layer order) or else by block list and index."""
    shared = set(rankings[0].layers).intersection(*(r.layers for r in rankings[1:]))
    if order is not None:
        return [layer for layer in order if layer in shared] + sorted(shared - set(order), key=_layer_key)
    return sorted(shared, key=_layer_key)


def _layer_key(name: str) -> tuple[str, int, str]:
    match = re.fullmatch(r"([a-z]*)(\d+)", name)
    return (match[1], int(match[2]), "") if match else ("~", 0, name)


def agreement(rankings: Sequence[RankedLayers], k: int, order: Sequence[str] | None = None) -> dict:
    """Every pair of ``rankings`` compared on their common layers: rank correlations and top-k overlap."""
    if len(rankings) < 2:
        raise ValueError("agreement needs at least two rankings")
    if len({r.label for r in rankings}) < len(rankings):
        raise ValueError("the rankings need distinct labels")
    layers = common_layers(rankings, order)
    if len(layers) < 2:
        raise ValueError(f"the rankings share {len(layers)} layer(s); at least 2 are needed to compare them")
    notes = [f"{r.label}: {len(r.layers) - len(layers)} layer(s) not ranked by every finder were left out"
             for r in rankings if len(r.layers) > len(layers)]
    pairs = [{"a": a.label, "b": b.label, **rank_correlations(a, b, layers), "top_k": top_k_overlap(a, b, k, layers)}
             for a, b in combinations(rankings, 2)]
    return {
        "layers": layers,
        "rankings": [{"label": r.label, "finder": r.finder, "source": r.source, "ascending": r.ascending,
                      "top": r.top(k, layers)} for r in rankings],
        "pairs": pairs,
        "notes": notes,
    }


def describe_pair(pair: dict) -> str:
    """One line: ``contrast vs ablation: Spearman 0.83, Kendall 0.67, top-3 overlap 2/3 (5, 9)``."""
    def fmt(x):
        return "undefined" if x is None else f"{x:.3f}"

    top = pair["top_k"]
    return (f"{pair['a']} vs {pair['b']}: Spearman {fmt(pair['spearman'])}, Kendall {fmt(pair['kendall'])}, "
            f"top-{top['k']} overlap {top['count']}/{top['k']} ({', '.join(top['shared']) or 'none'})")


def plot_agreement(rankings: Sequence[RankedLayers], layers: Sequence[str], k: int, title: str, path: Path,
                   dpi: int = 200, groups: Sequence[tuple[str, int]] = (),
                   ylabels: Sequence[str] | None = None) -> Path:
    """The finders' per-block scores side by side: one panel per ranking (each in its own unit) over the same layer
    axis, bars with the spread over pairs, each ranking's top ``k`` in red, a line at its neutral score."""
    n = len(rankings)
    fig = Figure(figsize=(max(8.0, 0.3 * len(layers) + 2), 1.0 + 2.4 * n), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    x = list(range(len(layers)))
    for i, (ax, r) in enumerate(zip(axes, rankings)):
        top = set(r.top(k, layers))
        ax.bar(x, [r.scores[layer] for layer in layers], yerr=[r.spread[layer] for layer in layers],
               color=[SUGGESTED_COLOR if layer in top else MEAN_COLOR for layer in layers], capsize=2,
               error_kw={"linewidth": 0.6})
        ax.axhline(r.neutral, color="black", linewidth=0.5)  # no effect
        ax.set_ylabel(ylabels[i] if ylabels else r.label, fontsize=8)
        ax.set_title(f"{r.label} ({'lower' if r.ascending else 'higher'} is better; top {k}: "
                     f"{', '.join(r.top(k, layers))})", fontsize=9)
        _mark_block_groups(ax, groups)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(layers, rotation=90 if len(x) > 24 else 0, fontsize=7 if len(x) > 24 else 9)
    axes[-1].set_xlabel("layer")
    fig.suptitle("\n".join(textwrap.wrap(title, TITLE_WIDTH)), fontsize=10)
    return save_figure(fig, path, dpi)


def write_agreement(entries: Sequence[tuple[str, str, dict]], out: str | Path, k: int, dpi: int = 200,
                    title: str | None = None) -> dict:
    """Compare rankings and write ``out/agreement.json`` and ``out/agreement.png``. ``entries``: ``(label, source,
    layers.json content)``. Returns the ``agreement.json`` content (paths under ``"path"`` and ``"figure"``)."""
    notes = check_comparable([(source, data) for _, source, data in entries])
    rankings = [ranked_layers(data, label, source) for label, source, data in entries]
    first = entries[0][2]
    result = agreement(rankings, k, first.get("layer_names"))
    result["notes"] = notes + result["notes"]
    model = title or str(first.get("model", "model")).rstrip("/").split("/")[-1]
    summary = "; ".join(f"{p['a']} vs {p['b']} ρ={'-' if p['spearman'] is None else format(p['spearman'], '.2f')}"
                        for p in result["pairs"])
    out = Path(out)
    ylabels = [f"{r.label}\n{data.get('metric', 'score')}" for r, (_, _, data) in zip(rankings, entries)]
    # the block lists begin at indices of the model's layer order: marked only when every layer is shown
    groups = first.get("block_groups", ()) if result["layers"] == first.get("layer_names") else ()
    figure = plot_agreement(rankings, result["layers"], k, f"{model}: per-block scores of {len(rankings)} rankings "
                            f"({summary})", out / "agreement.png", dpi, groups, ylabels)
    result = {"model": first.get("model"), "family": first.get("family"), "pairs_sha1": first.get("pairs_sha1"),
              "top_k": k, **result}
    path = atomic_write_json(out / "agreement.json", result)
    return {**result, "path": str(path), "figure": str(figure)}


@dataclass(frozen=True)
class Input:
    """One ranking to compare: the captures of one finder (pooled, as one input) or one ``layers.json``."""

    label: str
    paths: tuple[Path, ...]
    layers_json: dict | None = None  # the content of a layers.json input; None for captures


def read_layers_json(path: str | Path) -> dict:
    """The content of a ``layers.json``, or ``ValueError`` / ``FileNotFoundError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layers file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    ranked_layers(data, source=str(path))  # validates the rows
    return data


def group_inputs(paths: Sequence[str | Path]) -> list[Input]:
    """The rankings that ``paths`` make: captures (``.safetensors``) of the same finder pool into one ranking (as
    ``cslg analyse`` always pooled captures), each ``layers.json`` (``.json``) is one. Labels are the finders,
    numbered when a finder occurs twice (``contrast``, ``contrast-2``)."""
    from ..capture.files import read_metadata

    captures: dict[str, list[Path]] = {}
    order: list[tuple[str, Path | str]] = []
    for p in map(Path, paths):
        if p.suffix.lower() == ".json":
            data = read_layers_json(p)
            order.append((data.get("finder", DEFAULT_FINDER), p))
            continue
        finder = read_metadata(p).get("finder", DEFAULT_FINDER)
        if finder not in captures:
            order.append((finder, finder))
        captures.setdefault(finder, []).append(p)
    seen: dict[str, int] = {}
    inputs = []
    for finder, item in order:
        seen[finder] = seen.get(finder, 0) + 1
        label = finder if seen[finder] == 1 else f"{finder}-{seen[finder]}"
        if isinstance(item, Path):
            inputs.append(Input(label, (item,), read_layers_json(item)))
        else:
            inputs.append(Input(label, tuple(captures[item])))
    return inputs


def _capture_summary(paths: Sequence[Path]) -> dict:
    """What ``check_comparable`` compares, from the captures' metadata (read before anything is analysed)."""
    from ..capture.files import read_metadata

    metas = [read_metadata(p) for p in paths]
    prompts = [m.get("prompts") for m in metas]
    return {"model": metas[0].get("model"), "family": metas[0].get("family"),
            "pairs": sum(len(p) for p in prompts) if all(p is not None for p in prompts) else None,
            "pairs_sha1": None if any(p is None for p in prompts) else pairs_digest([q for p in prompts for q in p])}


def compare_inputs(inputs: Sequence[Input], out: str | Path, top_k: int, dpi: int = 200, title: str | None = None,
                   **analysis) -> dict:
    """Rank each input that is a set of captures into ``out/<label>/`` (``analysis``: the keyword arguments of
    ``cslg.analysis.analyse``), then compare all rankings (``write_agreement``). Inputs of different models or pairs
    are refused before anything is written."""
    from ..capture.files import load_capture
    from .ranking import analyse

    summaries = [(str(i.paths[0]), i.layers_json if i.layers_json is not None else _capture_summary(i.paths))
                 for i in inputs]
    check_comparable([(source, {k: v for k, v in s.items() if v is not None}) for source, s in summaries])
    out = Path(out)
    entries, written = [], []
    for i in inputs:
        if i.layers_json is not None:
            entries.append((i.label, str(i.paths[0]), i.layers_json))
            continue
        folder = out / re.sub(r"[^A-Za-z0-9_.-]", "_", i.label)
        result = analyse([load_capture(p) for p in i.paths], folder, top_k=top_k, dpi=dpi, title=title, **analysis)
        written.append(result["path"])
        entries.append((i.label, result["path"], result))
    return {**write_agreement(entries, out, top_k, dpi, title), "rankings_written": written}
