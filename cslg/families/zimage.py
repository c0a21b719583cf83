"""Z-Image (``ZImagePipeline``): one unified sequence ``[image, text]`` through single-stream blocks (``layers``,
each taking ``x`` and returning the whole sequence); two refiner blocks run on the image tokens alone
(``noise_refiner``, modulated) and two on the text tokens alone (``context_refiner``) before them; each part is
padded to a multiple of 32 tokens; spatial latents, 2x2 patches; a Qwen3 text encoder (its second-to-last hidden
states of the chat-templated prompt, padding dropped); the transformer predicts ``-v``.

The executor carries the unified sequence as two streams, the image tokens and the rest (the text tokens, their
padding, the image's padding), and a block sees them concatenated; the refiners run in ``embed`` (they are not
skippable blocks). CFG: the pipeline's ``pos + g (pos - neg)`` is ``CFG(g + 1)``; its ``cfg_normalization`` (the
guided prediction's norm capped at ``k ‖c‖``) and ``cfg_truncation`` (no guidance where ``(1000 - t) / 1000 > τ``)
are adapter options."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF
from transformers import Qwen3Config, Qwen3Model

from .base import IMAGE_ONLY, BlockList, SpatialAdapter, flow_timesteps, generator
from .layout import AttentionLayout, Conditioning, LatentLayout, Streams, TextRoles
from .tiny import TinySize, kl_vae, qwen_tokenizer, seeded

# What Qwen3's chat template renders for one user message with the generation prompt and thinking enabled (as
# ZImagePipeline calls it).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


class ZImageAdapter(SpatialAdapter):
    name = "zimage"
    pipeline_classes = (ZImagePipeline,)
    block_lists = (BlockList("layers", "", "layers", IMAGE_ONLY),)
    tiny_presets = ("tiny-zimage",)
    default_cfg_scale = 6.0  # ZImagePipeline's guidance_scale 5 in its convention c + 5 (c - u)
    default_max_sequence_length = 512
    # Tongyi-MAI/Z-Image-Turbo: transformer/config.json, 9 steps at 1024 px (guidance-distilled: no CFG)
    released = {
        "transformer": dict(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
            n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
            t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512],
        ),
        "height": 1024, "width": 1024, "steps": 9,
    }

    def __init__(self, pipe, guidance=None, frames=None, cfg_normalization: float = 0.0, cfg_truncation: float = 1.0):
        """``cfg_normalization``: ZImagePipeline's ``cfg_normalization`` k (0: off); ``cfg_truncation``: its τ
        (1 or more: off)."""
        super().__init__(pipe, guidance, frames)
        if cfg_normalization < 0:
            raise ValueError(f"cfg_normalization must be >= 0, got {cfg_normalization}")
        if cfg_truncation < 0:
            raise ValueError(f"cfg_truncation must be >= 0 (below, no step is guided), got {cfg_truncation}")
        self.cfg_normalization = float(cfg_normalization)
        self.cfg_truncation = float(cfg_truncation)

    def attention_output(self, block, convention):
        return block.attention.to_out[0], lambda output, n_image: output[:, :n_image]

    def attention_calls(self, block, convention):
        return [(block.attention, AttentionLayout("joint", text_first=False))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        """The pipeline's per-prompt embeddings (padding dropped), as rows padded with zeros to a common length that
        is a multiple of 32 (the length of the text stream), with the mask of each row's own tokens."""
        embeds = self.pipe.encode_prompt(prompt=list(prompts), device=self.device, do_classifier_free_guidance=False,
                                         max_sequence_length=max_sequence_length)[0]
        length = max(len(e) for e in embeds)
        length += (-length) % SEQ_MULTI_OF
        mask = torch.stack([torch.arange(length, device=self.device) < len(e) for e in embeds])
        return Conditioning(torch.stack([F.pad(e, (0, 0, 0, length - len(e))) for e in embeds]), None, mask)

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(  # drawn in float32, as ZImagePipeline does
            1, self.transformer.in_channels, height, width, torch.float32, self.device, generator(seed)
        )
        return latents, {}

    def timesteps(self, steps, latents):
        image_seq_len = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        return flow_timesteps(self.pipe.scheduler, steps, self.device, image_seq_len, 1.15)

    def embed(self, latents, t, cond, extras, attention_kwargs):
        """ZImageTransformer2DModel.forward up to its main layers: patchify and pad, embed, refine each stream."""
        tr = self.transformer
        p, f = tr.all_patch_size[0], tr.all_f_patch_size[0]
        key = f"{p}-{f}"
        x = latents.to(self.dtype).unsqueeze(2)
        timestep = (1000 - t.expand(latents.shape[0])) / 1000  # as the pipeline passes it
        adaln = tr.t_embedder(timestep * tr.t_scale).type_as(x)
        caps = [e[m] for e, m in zip(cond.embeds.to(self.dtype), cond.mask)]
        images, caps, _, x_pos, cap_pos, x_pad, cap_pad = tr.patchify_and_embed(list(x.unbind(0)), caps, p, f)
        x_lens = [len(i) for i in images]
        image = tr.all_x_embedder[key](torch.cat(images))
        image, x_freqs, x_mask, _, _ = tr._prepare_sequence(list(image.split(x_lens)), x_pos, x_pad, tr.x_pad_token,
                                                           None, x.device)
        for block in tr.noise_refiner:
            image = block(image, x_mask, x_freqs, adaln)
        cap_lens = [len(c) for c in caps]
        text = tr.cap_embedder(torch.cat(caps))
        text, cap_freqs, cap_mask, _, _ = tr._prepare_sequence(list(text.split(cap_lens)), cap_pos, cap_pad,
                                                              tr.cap_pad_token, None, x.device)
        for block in tr.context_refiner:
            text = block(text, cap_mask, cap_freqs)
        # [image, image padding, text, text padding] is the unified sequence; the streams are the image tokens and
        # [text, text padding, image padding]: attention is the same for any order of the keys
        n = (latents.shape[-2] // p) * (latents.shape[-1] // p)
        image, text = image[:, :n], torch.cat([text, image[:, n:]], dim=1)
        freqs = torch.cat([x_freqs[:, :n], cap_freqs, x_freqs[:, n:]], dim=1)
        lane, shared = {"freqs_cis": freqs, "adaln_input": adaln}, {}
        mask = None
        if cap_mask is not None:  # the unified sequence's: the image tokens and each row's own text tokens
            ones = lambda k: torch.ones(latents.shape[0], k, dtype=torch.bool, device=x.device)  # noqa: E731
            mask = torch.cat([ones(n), cap_mask, ones(x_lens[0] - n)], dim=1)
        (shared if mask is None else lane)["attn_mask"] = mask
        return Streams(image, text), lane, shared, {"adaln_input": adaln}

    def call_block(self, block, convention, streams, lane, shared):
        """A block of ``layers`` on the unified sequence ``[image, text]``; its output split back."""
        n = streams.image.shape[1]
        kw = {**lane, **shared}
        out = block(torch.cat([streams.image, streams.text], dim=1), kw["attn_mask"], kw["freqs_cis"],
                    kw["adaln_input"])
        return Streams(out[:, :n], out[:, n:])

    def image_tokens_of_call(self, convention, args, kwargs):
        """In diffusers' own forward a block gets the unified sequence ``[image, image padding, text, ...]``: the
        image tokens are the leading run that shares the first token's RoPE position on the first axis (every
        image token sits at position ``text length + 1`` there; padding at 0, text tokens at 1, 2, ...)."""
        freqs = args[2] if len(args) > 2 else kwargs["freqs_cis"]
        first_axis = freqs[0, :, 0]
        differs = (first_axis != first_axis[0]).nonzero()
        return int(differs[0, 0]) if len(differs) else first_axis.shape[0]

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        p, f = tr.all_patch_size[0], tr.all_f_patch_size[0]
        out = tr.all_final_layer[f"{p}-{f}"](image, c=post["adaln_input"])
        size = [(1, *latents.shape[-2:])] * image.shape[0]
        out = torch.stack(tr.unpatchify(list(out.unbind(0)), size, p, f)).squeeze(2)
        return -out.float()  # the transformer predicts -v, as the pipeline negates it

    def cfg_postprocessor(self, timestep):
        """ZImagePipeline's CFG options at ``timestep``: truncation (no guidance: ``c``) where
        ``(1000 - t) / 1000 > τ``, normalisation (each image's ``v`` scaled down to ``k ‖c‖`` where it is
        longer)."""
        truncated = (1000 - timestep) / 1000 > self.cfg_truncation

        def postprocess(v, c):
            if truncated:
                return c
            if self.cfg_normalization > 0:
                norm_c = torch.linalg.vector_norm(c.flatten(1), dim=1).view(-1, *[1] * (c.ndim - 1))
                norm_v = torch.linalg.vector_norm(v.flatten(1), dim=1).view(-1, *[1] * (v.ndim - 1))
                cap = norm_c * self.cfg_normalization
                v = torch.where(norm_v > cap, v * (cap / norm_v), v)
            return v

        return postprocess

    def layout(self, latents, extras):
        p = self.transformer.all_patch_size[0]
        return LatentLayout(latents.shape[-2] // p, latents.shape[-1] // p, patch=p)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """The chat-templated prompt: content = the prompt's tokens, background = the template's closing tokens
        (``<|im_end|>`` ...) and the padding of the text stream (attended: Z-Image pads with a learned token)."""
        tok = self.pipe.tokenizer
        full = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=True)
        start = full.rindex(prompt) if prompt else full.rindex("<|im_end|>")
        head, tail = full[:start], full[start + len(prompt):]
        n_head, n_tail = len(tok(head).input_ids), len(tok(tail).input_ids)
        n = min(len(tok(full).input_ids), text_len)
        content = tuple(range(n_head, max(n_head, n - n_tail)))
        return TextRoles(content, tuple(range(max(n_head, n - n_tail), text_len)), text_len)

    def default_size(self) -> int:
        """ZImagePipeline's 1024 px for the released 8x VAE: its 64 x 64 token grid, for any VAE."""
        return 64 * 2 * self.pipe.vae_scale_factor

    def decode(self, latents, height, width, output_type="pil"):
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_zimage(size, seed)


def qwen3_encoder(size: TinySize, seed: int, vocab_size: int, pad_token_id: int) -> Qwen3Model:
    """A 3-layer Qwen3 (hidden size ``t5_dim`` = the transformer's ``cap_feat_dim``; the pipeline reads the
    second-to-last hidden states)."""
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=size.t5_dim,
        intermediate_size=2 * size.t5_dim,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=size.t5_dim // 4,
        max_position_embeddings=2048,
        pad_token_id=pad_token_id,
    )
    return seeded(seed, lambda: Qwen3Model(config))


def build_tiny_zimage(size: TinySize = TinySize(), seed: int = 0) -> ZImagePipeline:
    """A Z-Image-like pipeline: two refiner blocks per stream and ``double_blocks`` single-stream layers of
    ``heads x head_dim`` (RoPE axes split like Z-Image's 32/48/48), a Qwen3 encoder with Qwen's chat template, the
    FLUX VAE's scaling and shift and Z-Image's flow-matching scheduler (shift 3)."""
    tok = qwen_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    hw = size.head_dim * 3 // 8 // 2 * 2
    transformer = seeded(
        seed + 1,
        lambda: ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=size.latent_channels,
            dim=size.heads * size.head_dim,
            n_layers=size.double_blocks,
            n_refiner_layers=2,
            n_heads=size.heads,
            n_kv_heads=size.heads,
            cap_feat_dim=size.t5_dim,
            axes_dims=[size.head_dim - 2 * hw, hw, hw],
            axes_lens=[1024, 512, 512],
        ),
    )
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
        vae=kl_vae(size, seed + 2, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=qwen3_encoder(size, seed + 3, len(tok), tok.convert_tokens_to_ids("<|endoftext|>")),
        tokenizer=tok,
        transformer=transformer,
    )
