"""The causal layer finders (step 1): along the trajectory of a pair's negative prompt (the one without the feature),
at every step and on the same latents, the negative prompt's prediction ``n``, the positive prompt's ``p`` and, for
every block ``l`` of every block list, the positive prompt's prediction with block ``l`` perturbed, ``p_l``:

- ``ablation`` (upstream's skip-ablation search): block ``l`` skipped;
- ``patching``: block ``l``'s image-token output replaced by the negative pass's output of the same block.

Per step and block: ``‖n - p_l‖₂`` and ``cos(n, p_l)``, and per step the unperturbed ``‖n - p‖₂`` and ``cos(n, p)``
(every normalisation is computed from these at analysis, ``cslg.analysis.causal``). The ``L`` perturbed passes
share their prefix with the unperturbed positive pass in one forward (``cslg.guidance.executor``): a step costs about
``2 + L/2`` forward passes (``3 + L/2`` with CFG), at most ``max_lanes`` passes per forward. With CFG (SD3) the
trajectory is CFG's of the negative prompt and ``n``, ``p``, ``p_l`` are the conditional predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..families.base import Adapter
from ..guidance.passes import Pass
from ..guidance.sampling import denoise, prepare
from ..options import FINDERS
from ..prompts import PromptPair
from .trajectory import PairTrajectory

CAUSAL_FINDERS = FINDERS[1:]
PER_LANE_ACTIVATIONS = 16  # the peak activations of one lane in a block, in token x hidden-size tensors (estimate)


def probe_name(layer: str) -> str:
    """The pass name of the positive prompt's prediction with block ``layer`` perturbed."""
    return f"b~{layer}"


@dataclass(frozen=True)
class ProbeTrajectory(PairTrajectory):
    """The negative prompt's trajectory (``a``, with CFG when ``cfg_scale`` > 1), the positive prompt ``b`` on the
    same latents, and ``b`` with each block of ``layers`` skipped (``ablation``) or patched from ``a``
    (``patching``)."""

    finder: str = "ablation"
    layers: tuple[str, ...] = ()
    trajectory: str = "shared"
    name = "finder"

    def __post_init__(self):
        super().__post_init__()
        if self.finder not in CAUSAL_FINDERS:
            raise ValueError(f"finder must be one of {', '.join(CAUSAL_FINDERS)}, got {self.finder!r}")
        if self.trajectory != "shared":
            raise ValueError(f"the {self.finder} finder follows the negative prompt's trajectory (shared), "
                             f"not {self.trajectory!r}")

    def passes(self, step):
        if self.finder == "ablation":
            probes = {probe_name(l): Pass.of("b", skip=[l]) for l in self.layers}
        else:
            probes = {probe_name(l): Pass.of("b", patch_from={l: "a"}) for l in self.layers}
        return super().passes(step) | probes


class ProbeRecorder:
    """Per step: ``distance[step, layer] = ‖n - p_l‖₂``, ``cosine[step, layer] = cos(n, p_l)`` and the unperturbed
    ``reference_distance[step] = ‖n - p‖₂``, ``reference_cosine[step] = cos(n, p)`` (float64 over every value of
    the prediction)."""

    def __init__(self, layers: list[str], steps: int):
        self.layers = layers
        self.distance = torch.zeros(steps, len(layers), dtype=torch.float64)
        self.cosine = torch.zeros_like(self.distance)
        self.reference_distance = torch.zeros(steps, dtype=torch.float64)
        self.reference_cosine = torch.zeros_like(self.reference_distance)

    def __call__(self, step: int, preds: dict[str, torch.Tensor]) -> None:
        n = preds["a"].double().flatten()
        others = torch.stack([preds["b"].double().flatten()] + [preds[probe_name(l)].double().flatten()
                                                                 for l in self.layers])
        distance = (others - n).norm(dim=1).cpu()
        cosine = F.cosine_similarity(others, n[None], dim=1).cpu()
        self.reference_distance[step], self.reference_cosine[step] = distance[0], cosine[0]
        self.distance[step], self.cosine[step] = distance[1:], cosine[1:]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"distance": self.distance.float(), "cosine": self.cosine.float(),
                "reference_distance": self.reference_distance.float(),
                "reference_cosine": self.reference_cosine.float()}


def check_finder_settings(finder: str, trajectory: str, site: str = "block", compare: str = "cond",
                          save_layers: object = ()) -> None:
    """Fail with one line, naming the setting, when a capture setting of the contrastive finder is given to a causal
    one."""
    if finder not in FINDERS:
        raise ValueError(f"--finder must be one of {', '.join(FINDERS)}, got {finder!r}")
    if finder == "contrast":
        return
    for flag, value, default in (("--trajectory", trajectory, "shared"), ("--site", site, "block"),
                                 ("--compare", compare, "cond")):
        if value != default:
            raise ValueError(f"{flag} {value}: the {finder} finder compares predictions along the negative "
                             f"prompt's trajectory ({flag[2:]} {default}); {flag} is for --finder contrast")
    if save_layers:
        raise ValueError(f"--save-activations: the {finder} finder records predictions, not activations")


def check_config(config) -> None:
    """``check_finder_settings`` of a ``CaptureConfig``."""
    check_finder_settings(config.finder, config.trajectory, config.site, config.compare, config.save_layers)


def probe_pair(adapter: Adapter, pair: PromptPair, config, max_lanes: int | None = None) -> dict[str, torch.Tensor]:
    """The causal measures [steps, layers] (and [steps] references) of one pair, from the noise of ``config.seed``."""
    check_config(config)
    method = ProbeTrajectory(cfg_scale=None if adapter.has_distilled_guidance else config.guidance,
                             finder=config.finder, layers=tuple(adapter.layer_names))
    run = prepare(adapter, method.conditions(pair), config.seed, config.steps, config.height, config.width,
                  config.max_sequence_length)
    recorder = ProbeRecorder(adapter.layer_names, config.steps)
    lanes = default_max_lanes(adapter, run.latents, run.extras, run.cond.embeds.shape[1]) if max_lanes is None \
        else max_lanes
    denoise(adapter, method, run, predictions=recorder, max_lanes=lanes)
    return {**recorder.tensors(), "timesteps": run.timesteps.float().cpu()}


def default_max_lanes(adapter: Adapter, latents: torch.Tensor, extras: dict, text_tokens: int) -> int | None:
    """On CUDA, as many lanes as 80% of the free memory holds (an estimate: ``PER_LANE_ACTIVATIONS`` token x hidden
    tensors per lane); elsewhere ``None`` (no cap: CPU memory is rarely the limit at the sizes CPUs can run)."""
    device = torch.device(adapter.device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    layout = adapter.layout(latents, extras)
    config = adapter.transformer.config
    hidden = config.get("num_attention_heads", 1) * config.get("attention_head_dim", 1)
    per_lane = (layout.h * layout.w + text_tokens) * hidden * torch.finfo(adapter.dtype).bits // 8
    return max(2, int(0.8 * free) // (PER_LANE_ACTIVATIONS * per_lane))
