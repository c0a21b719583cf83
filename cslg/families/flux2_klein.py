"""FLUX.2 [klein] (``Flux2KleinPipeline``): FLUX.2's transformer without the guidance embedding and a Qwen3 text
encoder; true CFG with an empty negative prompt in its pipeline, unless the checkpoint is step-distilled
(``is_distilled``). Everything else is FLUX.2's (``cslg.families.flux2``)."""

from __future__ import annotations

from diffusers import Flux2KleinPipeline

from .flux2 import Flux2Adapter, build_tiny_flux2


class Flux2KleinAdapter(Flux2Adapter):
    """FLUX.2 [klein]: no guidance embedding; true CFG (default scale 4) unless the pipeline's ``is_distilled``
    (then the default is 1, no negative pass: the pipeline ignores its guidance scale; an explicit CFG scale still
    runs true CFG here)."""

    name = "flux2-klein"
    pipeline_classes = (Flux2KleinPipeline,)
    tiny_presets = ("tiny-flux2-klein",)
    has_distilled_guidance = False
    default_guidance = None
    released = {  # black-forest-labs/FLUX.2-klein-4B transformer/config.json (step-distilled, 4 steps)
        "transformer": dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256,
                            mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6,
                            guidance_embeds=False),
        "height": 1024, "width": 1024, "steps": 4,
    }

    def __init__(self, pipe, guidance=None, frames=None):
        super().__init__(pipe, guidance, frames)
        config = getattr(pipe, "config", {})
        self.default_cfg_scale = 1.0 if config.get("is_distilled", False) else 4.0  # Flux2KleinPipeline's

    def chat_text(self, prompt: str) -> str:
        return self.pipe.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True, enable_thinking=False)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_flux2(size, seed, klein=True)
