"""benchmarks/real_size.py on the CPU: the released Wan widths with 2 blocks, tiny resolution; the tables have
their columns, the ideals are the counted ones and our generation equals the pipeline's."""

from __future__ import annotations

import json
import math

from benchmarks.real_size import main
from cslg.families.wan import WanAdapter


def test_real_size_runs_and_its_tables_are_sane(tmp_path):
    report = main(["--families", "wan", "--blocks", "2", "--height", "32", "--width", "32", "--frames", "1",
                   "--text-tokens", "8", "--steps", "2", "--rounds", "1", "--generation-steps", "2",
                   "--out", str(tmp_path / "rs")])
    assert json.loads((tmp_path / "rs.json").read_text()) == report
    markdown = (tmp_path / "rs.md").read_text()
    assert "| method | ms/step | x cfg | ideal | / ideal | ideal rule | peak GiB |" in markdown
    env, (fam,) = report["environment"], report["families"]
    assert env["device_name"].startswith("CPU") and env["versions"]["diffusers"] and env["dtype"] == "fp32"
    width = WanAdapter.released["transformer"]["num_attention_heads"] * WanAdapter.released["transformer"][
        "attention_head_dim"]
    assert fam["blocks"] == 2 and fam["config"]["num_layers"] == 2 and fam["config"]["ffn_dim"] == 8960
    assert fam["parameters"] > 2 * 8 * width**2  # the released widths: two blocks' attention weights alone
    ideal = {r["method"]: r["ideal"] for r in fam["per_step"]}
    # 2 blocks: skipping the last computes nothing after it; PAG at it computes it; slg-neg skips both
    assert ideal == {"none": 0.5, "cfg": 1.0, "cslg skip 1": 1.0, "cslg skip 0,1": 1.0, "pag 1": 1.25,
                     "slg-neg skip 0,1": 0.5, "scfg": 1.0, "cfg (again)": 1.0}
    for r in fam["per_step"]:
        assert r["ms_per_step"] > 0 and math.isclose(r["over_ideal"], r["x_cfg"] / r["ideal"])
    assert next(r for r in fam["per_step"] if r["method"] == "cfg")["x_cfg"] == 1.0
    (gen,) = fam["generation"]
    assert gen["pipeline"] == "WanPipeline" and gen["ours_s"] > 0 and gen["pipeline_s"] > 0
    assert gen["max_abs_diff"] < 1e-4, "our cfg and WanPipeline's differ: the timing compares different work"
