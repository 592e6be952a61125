"""The design-space explorer: the paper's sweeps, parameter and MAC counts, the front and the recommendation."""
from __future__ import annotations

import pytest

from convert.design_space.analysis import BASE, pareto_front, recommend
from convert.design_space.counting import macs, parameters
from convert.design_space.variants import SWEEPS, DesignSpaceError, Variant, parse_grid
from convert.models import MetaParameters, create_model
from realworld import convert_main

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


def _report_of(rows: list[dict]) -> str:
    from convert.design_space.report import markdown

    settings = {"sweep": "grid", "train": "t", "test": "s", "epochs": 1, "input_size": 32, "seed": 0, "weights": "x"}
    return markdown({"variants": rows, "settings": settings, "machine": {"cpu": "cpu"}, "timing": {"threads": 2},
                     "device": None}, 10.0)


def _row(name: str, pct: float, top1: float, low: float, high: float) -> dict:
    return {"name": name, "status": "ok", "variant": {**BASE, "sr": 0.125, "pct_3x3": pct}, "classes": 10,
            "arch": "squeezenet_custom", "arch_kwargs": {"pct_3x3": pct}, "params": 1000, "macs": 2e6,
            "int8_bytes": 4096, "p50_ms": 1.0, "int8_val_top1": top1, "int8_test_top1": top1,
            "float_test_top1": top1, "int8_test_top1_ci95_low": low, "int8_test_top1_ci95_high": high}


def test_a_sweep_at_chance_recommends_nothing_and_a_short_series_says_what_a_trend_needs():
    """Every variant at 10.00% on 10 classes was 'ship X'; a 2-point pct_3x3 series (plotted in curves.png)
    was '(the sweep holds no series to compare)'."""
    chance = [_row("v1.0", 0.5, 10.0, 7.0, 14.1), _row("pct3x3-0.25", 0.25, 10.0, 7.0, 14.1)]
    md = _report_of(chance)
    assert "ship **" not in md
    assert ("Nothing to recommend: no variant learned beyond chance (10.00%, 1 in 10 classes): the 95% interval of "
            "every int8 test top-1 includes it (the best, v1.0: 10.00% [7.0, 14.1])") in md
    assert "the sweep holds no series" not in md
    assert ("This sweep's 2 finished variants hold the series pct_3x3 0.25, 0.5 (plotted in curves.png, too short "
            "to test))") in md
    assert "at least 3 that differ only in pct_3x3" in md
    learned = [chance[0], _row("pct3x3-0.25", 0.25, 40.0, 33.0, 47.0)]
    assert "ship **pct3x3-0.25**" in _report_of(learned)
    old = [{k: v for k, v in r.items() if k != "classes"} for r in chance]  # results written before "classes"
    assert "ship **" in _report_of(old)


def test_a_dead_or_diverged_network_is_named_before_conversion():
    from convert.design_space.explore import _check_alive

    alive = {"phases": [{"end": {"loss": 0.72, "top1": 71.0}}]}
    _check_alive(alive, 10)
    with pytest.raises(DesignSpaceError, match="the network died"):  # every output 0: the uniform prediction
        _check_alive({"phases": [{"end": {"loss": 2.302585, "top1": 10.0}}]}, 10)
    with pytest.raises(DesignSpaceError, match="diverged"):
        _check_alive({"phases": [{"end": {"loss": float("nan"), "top1": 10.0}}]}, 10)


# ---------------------------------------------------------------- bad inputs (no training)

def _design_space(capsys, *args):
    """``python -m tools.design_space ARGS`` in this process: (exit code, stderr)."""
    from tools.design_space import main

    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def test_the_smallest_input_each_squeezenet_maps_to_an_output():
    """21 for v1.0, 17 for v1.1: one pixel less leaves nothing after the pools (PyTorch: "Output size is too small")."""
    import torch

    from convert.models import min_input_size

    for arch, version in (("squeezenet1_0", "1_0"), ("squeezenet1_1", "1_1"), ("squeezenet1_0_complex_bypass", "1_0")):
        model, size = create_model(arch, num_classes=10).eval(), min_input_size(version)
        with torch.no_grad():
            assert model(torch.zeros(1, 3, size, size)).shape == (1, 10)
            with pytest.raises(RuntimeError, match="Output size is too small"):
                model(torch.zeros(1, 3, size - 1, size - 1))
    assert (min_input_size("1_0"), min_input_size("1_1")) == (21, 17)


def test_input_sizes_and_grid_values_outside_the_design_space_are_one_line(capsys):
    """--input-size 7 was a RuntimeError in the MAC count, 99999 an allocation of 119 GB, 5000 accepted where
    training stops at 4096; --grid sr=1e308 an OverflowError. One line each, nothing built."""
    bound = "N (square) or HxW expected, each side 8..4096"
    for size in (7, 5000, 99999):  # the bound of every --input-size: train's, convert's and this one's
        rc, err = _design_space(capsys, "--list", "--input-size", size)
        assert rc == 2 and err.splitlines()[-1].endswith(f": error: argument --input-size: '{size}': {bound}, "
                                                         "e.g. 224 or 224x224"), err
        proc = convert_main("train", "--data", "d", "--out", "o", "--input-size", size)
        assert proc.returncode == 2 and f"argument --input-size: '{size}': {bound}" in proc.stderr, proc.stderr
    rc, err = _design_space(capsys, "--list", "--input-size", 20)
    assert rc == 2 and err == "error: --input-size 20: at least 21 expected for v1.0 (SqueezeNet v1.0's pools leave " \
        "no pixel of a smaller input)\n", err
    rc, out = _design_space(capsys, "--list", "--input-size", 17, "--grid", "version=1_1")
    assert rc == 0 and not out
    for grid, line in (("sr=1e308", "sr 1e+308: 0 < sr <= 1"), ("sr=nan", "sr nan: 0 < sr <= 1"),
                       ("sr=0.5,2", "sr 2.0: 0 < sr <= 1"), ("base_e=99999", "base_e 99999: 1..2048"),
                       ("incr_e=-1", "incr_e -1: 0..2048"), ("freq=0", "freq 0: 1..8"), ("freq=9", "freq 9: 1..8"),
                       ("base_e=1024;incr_e=1024;freq=1", "base_e 1024 + incr_e 1024 x 7 = 8192 expand filters in the "
                                                          "widest fire module: at most 2048 expected")):
        rc, err = _design_space(capsys, "--list", "--grid", grid)
        assert rc == 2 and err.startswith(f"error: --grid {grid!r}: {line}") and len(err.splitlines()) == 1, err
    assert [v.name for v in parse_grid("sr=0.125;base_e=2048;incr_e=0")] == ["e2048+0f2"]  # the edges are in
    rc, err = _design_space(capsys, "--list", "--grid", "sr=1;base_e=2048;incr_e=0")  # was a traceback
    assert rc == 2 and err.startswith("error: --grid 'sr=1;base_e=2048;incr_e=0': sr1_e2048+0f2: 199,424,872 "
                                      "parameters, at most 100,000,000 expected") and len(err.splitlines()) == 1, err


def test_a_listing_whose_reader_left_is_quiet():
    """`--list | head -1` said "error: Broken pipe" and exited 2: the reader here leaves before the first line
    (its end of the pipe closed at once), so every write of the listing meets a closed pipe."""
    import os
    import subprocess
    import sys

    from realworld import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "tools.design_space", "--list", "--grid", GRID], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err
