"""Benchmark at real size: each family's released transformer (``Adapter.released``: its configuration written in
code, random weights, no download) in bf16 at its usual resolution and step count, on random prompt embeddings of
the shapes its text encoders give (``Adapter.random_conditioning``: no text encoder, no VAE is built or run).

Per step (the sampler's loop body: the batched forward of the method's passes, its combination, the scheduler step;
timed from one step's end to the next in ``cslg.guidance.sampling.denoise``, step 0 not counted), for ``none``,
``cfg``, ``cslg`` skipping 1 and 3 middle blocks, ``pag`` at the middle block, ``slg-neg`` skipping 3 middle blocks
in the unconditional pass and S-CFG, next to the ideal ratio to ``cfg`` (blocks counted as equally expensive, a
lane as costing the same at any batch size):

  none     1/2                     one pass instead of two
  cslg     (2 + f) / 2             f: the blocks after the first skipped one that the skip lane computes, over L
  pag      (2 + f) / 2             f: the perturbed block and those after it, over L
  slg-neg  (2 - k / L) / 2         k skipped blocks in the unconditional pass
  scfg     1                       two passes; its attention maps (recorded in a third of the blocks) come on top

``cfg (again)``: cfg timed once more at the end; its distance from 1 is the noise of the measurement. Peak memory is
``torch.cuda.max_memory_allocated`` during each method's run (the weights included).

Whole generation (all steps): our ``cfg`` against the family's own diffusers pipeline called with the same
embeddings, initial latents and CFG scale (``output_type="latent"``), and on SD3 our CSLG against
``StableDiffusion3Pipeline(skip_guidance_layers=...)`` with guidance at every step; ``max |Δ|`` is the largest
difference of their final latents (0 up to rounding: the two compute the same thing).

``--compile``: the same again after ``cslg.compile_blocks`` (``torch.compile`` of every block, which the pipelines'
forwards then use too); the graph breaks dynamo reports are counted (goal: none).

The tables go to ``<out>.md`` and ``<out>.json`` with the device, the GPU's name and the library versions.

    python benchmarks/real_size.py                                  # GPU: bf16, released sizes and steps
    python benchmarks/real_size.py --families sd3 wan --compile
    python benchmarks/real_size.py --blocks 2 --height 64 --width 64 --frames 5 --steps 3 --generation-steps 2
                                                                    # CPU: fp32, released widths, 2 blocks per list
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cslg.families import Adapter, TinySize, adapter_class_by_name, adapter_for, family_names  # noqa: E402
from cslg.guidance.sampling import Prepared, compile_blocks, denoise  # noqa: E402
from cslg.io import atomic_write_text  # noqa: E402
from cslg.methods import CFG, CSLG, PAG, SCFG, Method, NoGuidance, Request, SkippedNegativeSLG  # noqa: E402
from cslg.provenance import versions  # noqa: E402

SCALE = 2.8  # CSLG / SLG scale
PAG_SCALE = 3.0
STEPS = 6  # per method and round for the per-step table; step 0 not counted
ROUNDS = 2
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Variant:
    label: str
    method: Method
    ideal: float
    rule: str


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Modules created inside get ``dtype`` parameters (a 20B model is never materialised in fp32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def released_config(cls: type[Adapter], blocks: int | None) -> dict[str, Any]:
    """The released transformer's configuration; ``blocks``: that many blocks in each block list instead."""
    config = dict(cls.released["transformer"])
    if blocks is not None:
        for key in [k for k in config if k.startswith("num_") and k.endswith("layers")]:
            config[key] = blocks
        if "dual_attention_layers" in config:
            config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < blocks)
    return config


def released_pipeline(cls: type[Adapter], blocks: int | None, dtype: torch.dtype, device: str):
    """The family's pipeline with the released transformer (random weights) and the scheduler and tokenizers of
    its tiny preset; no text encoder, no VAE (the pipelines then assume the released 8x VAE)."""
    tiny = cls.tiny(cls.tiny_presets[0], TinySize(), 0)
    torch.manual_seed(0)
    with default_dtype(dtype), torch.device(device):
        transformer = type(tiny.transformer)(**released_config(cls, blocks)).eval()
    components = {k: None if isinstance(v, torch.nn.Module) else v for k, v in tiny.components.items()}
    pipe = type(tiny)(**{**components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prepared(adapter: Adapter, method: Method, height: int, width: int, steps: int, text_tokens: int) -> Prepared:
    """A sampling run of ``method`` on random embeddings (one row per condition) from the noise of seed 0."""
    texts = method.conditions(Request("a storefront with a neon sign that says 'OPEN LATE'", ""))
    names = list(texts)
    cond = adapter.random_conditioning(len(names), text_tokens)
    latents, extras = adapter.initial_noise(0, height, width)
    return Prepared(names, cond, latents, adapter.timesteps(steps, latents), extras, texts)


def variants(adapter: Adapter, cfg_scale: float) -> list[Variant]:
    names = adapter.layer_names
    n, mid = len(names), len(names) // 2
    three = names[max(0, mid - 1):mid + 2]
    first3 = names.index(three[0])
    out = [Variant("none", NoGuidance(), 0.5, "1 / 2"), Variant("cfg", CFG(cfg_scale), 1.0, "1")]
    out.append(Variant(f"cslg skip {names[mid]}", CSLG((names[mid],), SCALE, cfg_scale),
                       (2 + (n - mid - 1) / n) / 2, f"(2 + {n - mid - 1}/{n}) / 2"))
    f3 = n - first3 - len(three)
    out.append(Variant(f"cslg skip {','.join(three)}", CSLG(tuple(three), SCALE, cfg_scale), (2 + f3 / n) / 2,
                       f"(2 + {f3}/{n}) / 2"))
    out.append(Variant(f"pag {names[mid]}", PAG((names[mid],), PAG_SCALE, cfg_scale), (2 + (n - mid) / n) / 2,
                       f"(2 + {n - mid}/{n}) / 2"))
    out.append(Variant(f"slg-neg skip {','.join(three)}", SkippedNegativeSLG(tuple(three), cfg_scale),
                       (2 - len(three) / n) / 2, f"(2 - {len(three)}/{n}) / 2"))
    out.append(Variant("scfg", SCFG(cfg_scale), 1.0, "1 (+ maps)"))
    out.append(Variant("cfg (again)", CFG(cfg_scale), 1.0, "1"))
    return list({v.label: v for v in out}.values())  # with fewer than 3 blocks "3 blocks" may be the 1-block one


def restarted(adapter: Adapter, run: Prepared) -> Prepared:
    """``run`` with the scheduler set up again (its timesteps and step index), to sample it once more."""
    return replace(run, timesteps=adapter.timesteps(len(run.timesteps), run.latents))


def step_times(adapter: Adapter, method: Method, run: Prepared) -> tuple[list[float], float | None]:
    """Seconds of each step after the first, and the peak GPU memory (GiB) of the run."""
    run = restarted(adapter, run)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    marks = [sync()]
    denoise(adapter, method, run, callback=lambda i, t, latents: marks.append(sync()) and None)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return [b - a for a, b in zip(marks[1:], marks[2:])], peak


def per_step_table(adapter: Adapter, cfg_scale: float, height: int, width: int, steps: int, rounds: int,
                   text_tokens: int) -> list[dict]:
    """One row per variant: median ms per step, its ratio to cfg's, the ideal, peak memory."""
    chosen = variants(adapter, cfg_scale)
    runs = {v.label: prepared(adapter, v.method, height, width, steps, text_tokens) for v in chosen}
    times: dict[str, list[float]] = {v.label: [] for v in chosen}
    peaks: dict[str, float | None] = {}
    for r in range(-1, rounds):  # round -1: warm-up (and compilation)
        for v in chosen:
            seconds, peaks[v.label] = step_times(adapter, v.method, runs[v.label])
            if r >= 0:
                times[v.label] += seconds
    cfg_ms = 1000 * statistics.median(times["cfg"])
    rows = []
    for v in chosen:
        ms = 1000 * statistics.median(times[v.label])
        rows.append({"method": v.label, "ms_per_step": ms, "x_cfg": ms / cfg_ms, "ideal": v.ideal, "rule": v.rule,
                     "over_ideal": ms / cfg_ms / v.ideal, "peak_gib": peaks[v.label]})
    return rows


def generation_rows(adapter: Adapter, cfg_scale: float, height: int, width: int, steps: int,
                    text_tokens: int) -> list[dict]:
    """Whole generations: our cfg against the family pipeline's; on SD3 also our CSLG against diffusers' SLG."""
    pipe = adapter.pipe
    pairs = [("cfg", CFG(cfg_scale), {})]
    if "skip_guidance_layers" in inspect.signature(pipe.__call__).parameters:  # StableDiffusion3Pipeline's SLG
        names = adapter.layer_names
        three = names[max(0, len(names) // 2 - 1):len(names) // 2 + 2]
        # diffusers guides at steps i with N*start < i < N*stop: start -1, stop 1 is every step, as ours 0 to 1
        pairs.append((f"cslg skip {','.join(three)}", CSLG(tuple(three), SCALE, cfg_scale, start=0.0, stop=1.0),
                      {"skip_guidance_layers": [int(x) for x in three], "skip_layer_guidance_scale": SCALE,
                       "skip_layer_guidance_start": -1.0, "skip_layer_guidance_stop": 1.0}))
    rows = []
    for label, method, extra in pairs:
        run = prepared(adapter, method, height, width, steps, text_tokens)
        cond, uncond = run.cond.select([run.conditions.index("cond")]), run.cond.select([run.conditions.index("uncond")])
        call = dict(adapter.pipeline_inputs(cond, uncond, cfg_scale), height=height, width=width,
                    num_inference_steps=steps, latents=run.latents.clone(), output_type="latent", **extra)
        timed = {}
        for who, go in (("ours", lambda: denoise(adapter, method, restarted(adapter, run))),
                        ("pipeline", lambda: pipe(**call, return_dict=False)[0])):
            go()  # warm-up (and compilation)
            start = sync()
            timed[who] = (go(), sync() - start)
        (ours, t_ours), (theirs, t_theirs) = timed["ours"], timed["pipeline"]
        diff = (ours.float() - theirs.float()).abs().max().item()
        rows.append({"method": label, "steps": steps, "ours_s": t_ours, "pipeline_s": t_theirs,
                     "ours_over_pipeline": t_ours / t_theirs, "max_abs_diff": diff,
                     "pipeline": type(pipe).__name__ + (" (skip_guidance_layers)" if extra else "")})
    return rows


def graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def bench_family(name: str, args: argparse.Namespace) -> dict:
    cls = adapter_class_by_name(name)
    if cls.released is None:
        return {"family": name, "skipped": "no released configuration (Adapter.released)"}
    settings = cls.released
    height, width = args.height or settings["height"], args.width or settings["width"]
    steps = args.generation_steps or settings["steps"]
    text_tokens = args.text_tokens or settings["text_tokens"]
    pipe = released_pipeline(cls, args.blocks, DTYPES[args.dtype], args.device)
    adapter = adapter_for(pipe, frames=(args.frames or settings.get("frames")) if cls.video else None)
    try:
        adapter.random_conditioning(1, 1)
    except NotImplementedError as e:
        return {"family": name, "skipped": str(e)}
    cfg_scale = adapter.default_cfg_scale if adapter.default_cfg_scale > 1 else 3.5
    out = {"family": name, "transformer": type(pipe.transformer).__name__,
           "config": {k: list(v) if isinstance(v, tuple) else v for k, v in released_config(cls, args.blocks).items()},
           "parameters": sum(p.numel() for p in pipe.transformer.parameters()), "blocks": len(adapter.layer_names),
           "height": height, "width": width, "frames": adapter.frames if cls.video else None,
           "text_tokens": text_tokens, "cfg_scale": cfg_scale, "generation_steps": steps}
    print(f"[{name}] {out['parameters'] / 1e9:.2f}B parameters, {out['blocks']} blocks, {width}x{height}"
          + (f"x{adapter.frames} frames" if cls.video else "") + f", {text_tokens} text tokens", flush=True)
    out["per_step"] = per_step_table(adapter, cfg_scale, height, width, args.steps, args.rounds, text_tokens)
    out["generation"] = generation_rows(adapter, cfg_scale, height, width, steps, text_tokens)
    if args.compile:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compile_blocks(adapter, backend=args.compile_backend)
        out["compiled_per_step"] = per_step_table(adapter, cfg_scale, height, width, args.steps, args.rounds,
                                                  text_tokens)
        out["compiled_generation"] = generation_rows(adapter, cfg_scale, height, width, steps, text_tokens)
        out["graph_breaks"] = graph_breaks()
    del pipe, adapter
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Real-size benchmark: {env['device_name']}, {env['dtype']}", "",
             f"torch {env['versions'].get('torch')}, diffusers {env['versions'].get('diffusers')}, "
             f"cslg {env['versions'].get('cslg')} ({env['versions'].get('git_commit', 'no commit')}); "
             f"{env['steps']} steps x {env['rounds']} rounds per method (step 0 not counted)"
             + (f"; {env['blocks']} blocks per block list (not the released depth)" if env["blocks"] else ""), ""]
    for fam in report["families"]:
        if "skipped" in fam:
            lines += [f"## {fam['family']}: skipped ({fam['skipped']})", ""]
            continue
        size = f"{fam['width']}x{fam['height']}" + (f", {fam['frames']} frames" if fam["frames"] else "")
        lines += [f"## {fam['family']} ({fam['transformer']}, {fam['parameters'] / 1e9:.2f}B parameters, "
                  f"{fam['blocks']} blocks, {size}, {fam['text_tokens']} text tokens, cfg {fam['cfg_scale']:g})", ""]
        for key, title in (("per_step", "per step"), ("compiled_per_step", "per step, blocks compiled")):
            if key not in fam:
                continue
            lines += [f"{title}:", "", "| method | ms/step | x cfg | ideal | / ideal | ideal rule | peak GiB |",
                      "|---|---:|---:|---:|---:|---|---:|"]
            for r in fam[key]:
                peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
                lines.append(f"| {r['method']} | {r['ms_per_step']:.1f} | {r['x_cfg']:.3f} | {r['ideal']:.3f} | "
                             f"{r['over_ideal']:.3f} | {r['rule']} | {peak} |")
            lines.append("")
        for key, title in (("generation", "whole generation"), ("compiled_generation", "whole generation, compiled")):
            if key not in fam:
                continue
            lines += [f"{title}:", "", "| method | steps | ours s | pipeline s | ours / pipeline | max abs diff | "
                      "pipeline |", "|---|---:|---:|---:|---:|---:|---|"]
            for r in fam[key]:
                lines.append(f"| {r['method']} | {r['steps']} | {r['ours_s']:.2f} | {r['pipeline_s']:.2f} | "
                             f"{r['ours_over_pipeline']:.3f} | {r['max_abs_diff']:.2e} | {r['pipeline']} |")
            lines.append("")
        if "graph_breaks" in fam:
            lines += [f"graph breaks with compiled blocks: {fam['graph_breaks']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", choices=family_names(), default=None, help="default: every family")
    p.add_argument("--blocks", type=int, default=None, help="blocks per block list (default: the released depth)")
    p.add_argument("--height", type=int, default=None, help="default: the family's usual resolution")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="video families' frames (default: the pipeline's)")
    p.add_argument("--text-tokens", type=int, default=None, help="default: the family's usual prompt length")
    p.add_argument("--steps", type=int, default=STEPS, help="steps per method and round (per-step table)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds per method, after one warm-up")
    p.add_argument("--generation-steps", type=int, default=None, help="whole generations (default: the family's)")
    p.add_argument("--compile", action="store_true", help="also with every block compiled (torch.compile)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of --compile")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default="benchmarks/results/real_size", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps: at least 2 (step 0 is not counted)")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    cuda = args.device.startswith("cuda")
    environment = {"device": args.device, "device_name": torch.cuda.get_device_name(args.device) if cuda else
                   f"CPU ({torch.get_num_threads()} threads)", "dtype": args.dtype, "blocks": args.blocks,
                   "steps": args.steps, "rounds": args.rounds, "compile": args.compile and args.compile_backend,
                   "versions": versions()}
    report = {"environment": environment, "families": []}
    out = Path(args.out)
    for name in args.families or family_names():
        report["families"].append(bench_family(name, args))
        atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=1))  # what is done survives a crash
        atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
