"""``--preset paper`` reproduces upstream's computation, re-expressed here independently: forward hooks on
``transformer_blocks[i].attn.to_out[0]``, two plain diffusers pipeline calls per pair from the same seed, the final
step, cosine per batch row averaged over the rows (with SD3's CFG the unconditional row too), first difference with 1
prepended."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import FLUX_LayerExperiment_pairwise as flux_script
import SD3_LayerExperiment_pairwise as sd3_script
import visualize
from cslg.capture import load_capture
from cslg.analysis import first_difference

PAIR = ("a dog on a sidewalk", "a dog wearing a tag that says 'buddy'")
STEPS, SIZE, MSL = 3, 32, 32


def _upstream(pipe, guidance: float) -> torch.Tensor:
    """Upstream's capture of one pair: per joint/double block, the final step's cosine averaged over batch rows."""
    blocks = pipe.transformer.transformer_blocks
    outputs: list[dict[int, torch.Tensor]] = [{}, {}]
    for p, prompt in enumerate(PAIR):
        hooks = [block.attn.to_out[0].register_forward_hook(lambda m, a, out, i=i, p=p: outputs[p].__setitem__(i, out))
                 for i, block in enumerate(blocks)]  # the last call (the final step) stays
        try:
            pipe(prompt, num_inference_steps=STEPS, height=SIZE, width=SIZE, max_sequence_length=MSL,
                 guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(0), output_type="latent")
        finally:
            for hook in hooks:
                hook.remove()
    return torch.stack([F.cosine_similarity(outputs[0][i].flatten(1), outputs[1][i].flatten(1), dim=1).mean()
                        for i in range(len(blocks))])


def _capture(script, model, pairs, guidance, out, *flags):
    script.main(["--model", model, "--prompts", str(pairs), "--pairs", "1", "--steps", str(STEPS), "--height", str(SIZE),
                 "--width", str(SIZE), "--max-sequence-length", str(MSL), "--guidance", str(guidance), "--out", str(out),
                 *flags])
    return load_capture(out)


@pytest.mark.parametrize("script,model,guidance", [(sd3_script, "tiny-sd3", 7.0), (flux_script, "tiny-flux", 3.5)])
def test_paper_preset_equals_upstream_procedure(script, model, guidance, tmp_path):
    from ..helpers import tiny

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"no_text": PAIR[0], "with_text": PAIR[1]}]))
    out = tmp_path / "capture.safetensors"
    capture = _capture(script, model, pairs, guidance, out, "--preset", "paper")
    assert capture.metadata["site"] == "attn" and capture.metadata["compare"] == "all"
    n = len(tiny(model).transformer.transformer_blocks)
    expected = _upstream(tiny(model), guidance)
    torch.testing.assert_close(capture.cosine[0, -1, :n], expected, atol=1e-5, rtol=0)
    assert expected.min() < 0.99999, "the two prompts gave equal attention outputs: the test could not fail"
    block_site = _capture(script, model, pairs, guidance, tmp_path / "block.safetensors")
    assert not torch.allclose(block_site.cosine[0, -1, :n], expected, atol=1e-4)  # the site matters
    if model == "tiny-sd3":  # and so do SD3's unconditional rows
        cond_rows = _capture(script, model, pairs, guidance, tmp_path / "cond.safetensors", "--site", "attn")
        assert not torch.allclose(cond_rows.cosine[0, -1, :n], expected, atol=1e-6)

    layers = visualize.main([str(out), "--preset", "paper", "--out", str(tmp_path / "ana"), "--dpi", "50"])
    data = json.loads(layers.read_text())
    assert data["baseline"] == "one" and data["step"] == -1 and data["metric"] == "difference"
    scores = first_difference(capture.cosine[:, -1].double())[0]
    assert data["ranking"][0]["layer"] == capture.layer_names[int(scores.argmin())]


def test_paper_recipe_protocol_and_table():
    from cslg.methods import SLG
    from cslg.cli.paper import UPSTREAM_MEANS, parse_args, protocol, table

    labelled = protocol(parse_args([]))
    assert [label for label, _ in labelled] == [
        "no_guidance", "default_cfg", "slg_skiplayer_9", "slg_skiplayer_12", "slg_skiplayer_9_12",
        "slg_block_14", "slg_block_17", "slg_block_14_17"]
    assert labelled[4][1] == SLG(("9", "12"), 2.8, 7.0, 0.01, 0.2) and labelled[7][1].layers == ("14", "17")
    rows = [{"image": "a", "ocr_similarity": 0.5}, {"image": "b", "ocr_similarity": 0.25},
            {"image": "c", "ocr_similarity": 1.0}, {"image": "d", "ocr_similarity": ""}]
    out = table(rows, {"a": "default_cfg", "b": "default_cfg", "c": "slg_block_14", "d": "slg_block_14"})
    assert out == [{"method": "default_cfg", "n": 2, "ocr_similarity": 0.375, "upstream_reported": 0.423},
                   {"method": "slg_block_14", "n": 1, "ocr_similarity": 1.0, "upstream_reported": ""}]
    assert UPSTREAM_MEANS["slg_skiplayer_9"] == 0.458
