"""The design-space explorer: the paper's sweeps, parameter and MAC counts, the front and the recommendation."""
from __future__ import annotations

import pytest

from convert.design_space.analysis import pareto_front, recommend
from convert.design_space.counting import macs, parameters
from convert.design_space.variants import SWEEPS, DesignSpaceError, Variant, parse_grid
from convert.models import MetaParameters, create_model

GRID = "pct_3x3=0.5,0.25"


# ---------------------------------------------------------------- definitions (no training)

def test_paper_sweeps_and_widths():
    assert [v.sr for v in SWEEPS["sr"]] == [0.125, 0.25, 0.5, 0.75, 1.0]
    assert [v.pct_3x3 for v in SWEEPS["pct3x3"]][0] == 0.01 and all(v.sr == 0.5 for v in SWEEPS["pct3x3"])
    assert [v.bypass for v in SWEEPS["bypass"]] == ["none", "simple", "complex"]
    assert Variant().arch() == ("squeezenet1_0", {}) and Variant().paper_default == "v1.0"
    assert Variant(version="1_1").arch() == ("squeezenet1_1", {}) and Variant(version="1_1").paper_default == "v1.1"
    assert Variant(bypass="complex").arch() == ("squeezenet1_0_complex_bypass", {})
    arch, kw = Variant(sr=0.5, pct_3x3=0.25).arch()
    assert arch == "squeezenet_custom" and kw == {"sr": 0.5, "pct_3x3": 0.25}
    # SR 0.5: fire2 squeezes to 64 of its 128 expand filters, a quarter of them 3x3
    assert MetaParameters(sr=0.5, pct_3x3=0.25).fire_widths()[0] == (64, 96, 32)
    assert 6 <= len(SWEEPS["reduced"]) <= 9 and len({v.name for v in SWEEPS["all"]}) == len(SWEEPS["all"])
    assert [v.name for v in parse_grid(GRID)] == ["v1.0", "pct3x3-0.25"]
    assert [v.name for v in parse_grid("version=1_1;pct_3x3=0.5,0.25")] == ["v1.1", "v1.1_pct3x3-0.25"]
    assert len(parse_grid("sr=0.25,0.5;bypass=none,simple,complex")) == 6
    for bad in ("sr=abc", "colour=red", "sr=0.5;sr=0.25", "bypass=diagonal", "pct_3x3=1.5", ""):
        with pytest.raises(DesignSpaceError):
            parse_grid(bad)


def test_counts_match_torchvisions_published_figures():
    # torchvision's model cards: squeezenet1_0 1,248,424 parameters, 0.82 GFLOPS; squeezenet1_1 1,235,496, 0.35
    v10, v11 = create_model("squeezenet1_0"), create_model("squeezenet1_1")
    assert parameters(v10) == 1_248_424 and parameters(v11) == 1_235_496
    assert round(macs(v10, 224) / 1e9, 2) == 0.82 and round(macs(v11, 224) / 1e9, 2) == 0.35
    # the paper's Fig. 3a: SR 0.75 has 19 MB of float weights
    assert round(parameters(create_model("squeezenet_custom", sr=0.75)) * 4 / 1e6) == 19


def test_front_and_recommendation_choose_on_validation():
    rows = [{"name": n, "status": "ok", "p50_ms": lat, "int8_val_top1": val, "int8_test_top1": test}
            for n, lat, val, test in [("a", 1.0, 80.0, 81.0), ("b", 2.0, 79.0, 90.0), ("c", 3.0, 85.0, 84.0),
                                      ("d", 12.0, 90.0, 91.0)]]
    results = {"variants": rows, "device": None}
    assert [r["name"] for r in pareto_front(rows, lambda r: r["p50_ms"])] == ["a", "c", "d"]  # b: better test only
    rec = recommend(results, 10.0)
    assert rec["choice"]["name"] == "c" and rec["next"]["name"] == "d" and rec["within"] == ["a", "b", "c"]
    assert recommend(results, 0.5)["choice"] is None


def test_a_dead_or_diverged_network_is_named_before_conversion():
    from convert.design_space.explore import _check_alive

    alive = {"phases": [{"end": {"loss": 0.72, "top1": 71.0}}]}
    _check_alive(alive, 10)
    with pytest.raises(DesignSpaceError, match="the network died"):  # every output 0: the uniform prediction
        _check_alive({"phases": [{"end": {"loss": 2.302585, "top1": 10.0}}]}, 10)
    with pytest.raises(DesignSpaceError, match="diverged"):
        _check_alive({"phases": [{"end": {"loss": float("nan"), "top1": 10.0}}]}, 10)
