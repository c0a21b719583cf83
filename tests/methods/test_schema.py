"""One declaration per method: validation at construction, to_dict / from_dict, the grid flags, cells and params
derived from it, and a new method added as one module and its registry line."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import pytest

from cslg.cli import grid as grid_cli
from cslg.guidance.passes import Pass
from cslg.methods import CSLG, PAG, REGISTRY, SCFG, Method, Request, declared, option
from cslg.methods.base import cfg, cfg_scale_option

REQUIRED = {"layers": ("1",), "scale": 1.0}  # the options without defaults (CSLG, slg-neg)


def _build(cls, **kw):
    return cls(**{**{d.name: REQUIRED[d.name] for d in declared(cls) if d.required}, **kw})


def _bad_numbers(d):
    """Values outside what ``d`` declares: non-finite, and beyond each bound."""
    bad = [math.nan, math.inf, -math.inf] if d.kind == "float" else [1.5]
    if d.spec.low is not None:
        bad.append(d.spec.low - 1)
    if d.spec.high is not None:
        bad.append(d.spec.high + 1)
    return bad


NUMBERS = [(cls, d) for cls in REGISTRY.values() for d in declared(cls) if d.kind in ("float", "int")]


@pytest.mark.parametrize("cls,d", NUMBERS, ids=[f"{c.name}.{d.name}" for c, d in NUMBERS])
def test_constructors_reject_bad_numbers_naming_the_argument(cls, d):
    for value in _bad_numbers(d):
        with pytest.raises((ValueError, TypeError), match=rf"^{cls.name}: {d.name}: "):
            _build(cls, **{d.name: value})
    for value in ("7", True, [1.0]):
        with pytest.raises(TypeError, match=rf"^{cls.name}: {d.name}: "):
            _build(cls, **{d.name: value})


def test_the_issue_examples_are_refused():
    with pytest.raises(ValueError, match=r"^cslg: scale: nan is not a finite number at least 0$"):
        CSLG(layers=["1"], scale=float("nan"))
    with pytest.raises(ValueError, match=r"^cfg: cfg_scale: inf is not"):
        REGISTRY["cfg"](float("inf"))
    with pytest.raises(ValueError, match=r"^pag: scale: -3.0 is not a finite number at least 0$"):
        PAG(["1"], -3.0)
    with pytest.raises(ValueError, match=r"^cslg: layers: layer '1' is given twice$"):
        CSLG([1, 1], 1.0)
    with pytest.raises(ValueError, match=r"^scfg: completion: 'fast' is not one of paper, code$"):
        SCFG(completion="fast")
    with pytest.raises(TypeError, match=r"^cslg: layers: expected layer names"):
        CSLG([1.5], 1.0)
    with pytest.raises(ValueError, match="need start <= stop"):
        CSLG(["1"], 1.0, start=0.6, stop=0.2)


def test_values_are_canonical_so_equal_settings_are_equal_objects():
    assert CSLG([5, "S2"], 2, 7) == CSLG(("5", "s2"), 2.0, 7.0)
    assert hash(CSLG("5,s2", 2)) == hash(CSLG(["5", "s2"], 2.0))
    assert isinstance(CSLG(["1"], 2).scale, float)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_round_trips_through_a_plain_dict(name):
    cls = REGISTRY[name]
    changed = {}
    for d in declared(cls):  # a non-default value for every option that has an obvious one
        if d.kind == "float" and d.default not in (None,):
            changed[d.name] = 0.5 if d.spec.high == 1 else 2.5
        elif d.kind == "int":
            changed[d.name] = 2
        elif d.kind == "bool":
            changed[d.name] = not d.default
    method = _build(cls, **changed)
    data = method.to_dict()
    assert data["method"] == name and json.loads(json.dumps(data)) == data
    assert Method.from_dict(data) == method and cls.from_dict(data) == method
    assert method.params() == {k: v for k, v in data.items() if k != "method"}


def test_from_dict_errors():
    with pytest.raises(ValueError, match="method 'ddim': expected one of"):
        Method.from_dict({"method": "ddim"})
    with pytest.raises(ValueError, match="cslg: unknown option.*strength"):
        Method.from_dict({"method": "cslg", "layers": ["1"], "scale": 1.0, "strength": 2})
    with pytest.raises(ValueError, match="got method 'cfg', expected 'pag'"):
        PAG.from_dict({"method": "cfg"})


def test_every_option_has_its_flag_and_default_in_grid_help():
    from cslg.cli.common import Formatter

    parser = grid_cli.configure(argparse.ArgumentParser(), model="x")
    formatter = Formatter("cslg grid")
    for cls in REGISTRY.values():
        for d in declared(cls):
            action = parser._option_string_actions[d.flag(cls.name)]
            help = formatter._get_help_string(action)
            assert d.describe() in help, (cls.name, d.name, help)
            if d.default is not None and not d.required and d.kind != "layers":
                assert "(default: " in help, (cls.name, d.name, help)
    assert formatter._get_help_string(parser._option_string_actions["--pag-scales"]).endswith("(default: 3.0)")


@dataclass(frozen=True)
class Sharpen(Method):
    """``v = u + w (c - u) + s (c - c_skip)`` with blocks ``first`` .. ``first + depth - 1`` skipped (a test
    method: one class, one registry line)."""

    cfg_scale: float | None = cfg_scale_option()
    sharpness: float = option(2.0, "skip scale s", low=0, axis=True)
    depth: int = option(1, "how many blocks from block 0 are skipped", low=1, high=4)
    name = "sharpen"
    title = "a test method"

    def conditions(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        skip = [str(i) for i in range(self.depth)]
        return {"uncond": Pass("uncond"), "cond": Pass("cond"), "skip": Pass.of("cond", skip=skip)}

    def combine(self, preds, step):
        c = preds["cond"]
        return cfg(preds["uncond"], c, self.cfg_scale) + self.sharpness * (c - preds["skip"])


def test_a_new_method_is_one_module_and_its_registry_line(monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, "sharpen", Sharpen)
    text = grid_cli.configure(argparse.ArgumentParser(), model="x").format_help()
    assert "--sharpen-sharpnesses" in text and "--sharpen-depth" in text and "sharpen:" in text
    cells = grid_cli.cells_of(["--methods", "sharpen", "--cfg-scales", "3,5", "--sharpen-sharpnesses", "1,2",
                               "--sharpen-depth", "2"])
    assert cells == [Sharpen(3.0, 1.0, 2), Sharpen(3.0, 2.0, 2), Sharpen(5.0, 1.0, 2), Sharpen(5.0, 2.0, 2)]
    with pytest.raises(SystemExit, match=r"^--sharpen-depth: 9 is not an integer between 1 and 4$"):
        grid_cli.cells_of(["--methods", "sharpen", "--sharpen-depth", "9"])
    with pytest.raises(ValueError, match=r"^sharpen: depth: 0 is not an integer between 1 and 4$"):
        Sharpen(depth=0)
    assert Sharpen(4.0).params() == {"cfg_scale": 4.0, "sharpness": 2.0, "depth": 1}
    assert Sharpen(4.0).conditions(Request("p", "n")) == {"uncond": "n", "cond": "p"}
