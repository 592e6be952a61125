"""Empirical bias correction on the real converted model: it must undo a known shift of one bias."""
from pathlib import Path

import numpy as np

from convert.bias_correction import (_channel_stats, _cut_after, _interpreter, _levels, _unshare_biases, correct_biases,
                                     read_bias)
from convert.calibration import load_views
from convert.pipeline import sibling_paths
from edge_runtime.metadata import read_model_info

ROOT = Path(__file__).resolve().parents[1]


def test_correction_undoes_a_shifted_bias(int8_model):
    """Shift one channel of a middle layer by 30% of its mean output; correction against the float
    model must bring it back to within 15% of the shift, and leave the other channels near where they were."""
    model = _unshare_biases(int8_model.read_bytes())
    float_model = sibling_paths(int8_model)[1].read_bytes()
    info = read_model_info(int8_model)
    photos = sorted((ROOT / "calib_data").glob("*.jpg"))[:12]
    crops, _ = load_views(photos, info.preprocessing, scales=(1.0,), mirror=False)

    layer = 5
    it, ops = _interpreter(model)
    means, _ = _channel_stats(it, [ops[layer]], crops)
    channel = int(np.argmax(means[0]))
    scales = {d["index"]: d["quantization_parameters"]["scales"] for d in it.get_tensor_details()}
    inp, w = (int(i) for i in ops[layer]["inputs"][:2])
    shift = int(round(0.3 * means[0][channel] / (scales[inp][0] * scales[w][channel])))
    assert shift > 100
    bias_tensor, channels = int(ops[layer]["inputs"][2]), len(means[0])
    original, start = read_bias(model, bias_tensor, channels)
    bad = original.copy()
    bad[channel] += shift
    shifted = bytearray(model)
    shifted[start:start + 4 * len(bad)] = bad.tobytes()

    fixed, summary = correct_biases(bytes(shifted), float_model, crops, strength=1.0)
    after, _ = read_bias(fixed, bias_tensor, channels)
    assert summary["bias_correction"]["layers"] == len(ops)
    assert abs(int(after[channel]) - int(original[channel])) < 0.15 * shift, (original[channel], shift, after[channel])
    others = np.delete(np.abs(after.astype(np.int64) - original), channel)
    assert np.median(others) < 0.15 * shift


def test_a_level_measured_on_the_model_cut_after_it_is_the_full_models(int8_model):
    """Each level of the correction runs the model cut after that level (the layers below it are not run):
    the level's int8 outputs are the full model's, bit for bit, for every level, so the artifact is the same
    bytes as when every pass ran the whole model (measured: the same sha256, conversion 83 -> 68 s)."""
    model = _unshare_biases(int8_model.read_bytes())
    info = read_model_info(int8_model)
    crops, _ = load_views(sorted((ROOT / "calib_data").glob("*.jpg"))[:1], info.preprocessing, scales=(1.0,),
                          mirror=False)
    full, ops = _interpreter(model)
    full.set_tensor(full.get_input_details()[0]["index"], crops[:1])
    full.invoke()
    levels = _levels(ops)
    assert len(levels) >= 18
    for level in levels:
        cut, cut_ops = _interpreter(_cut_after(model, [ops[k] for k in level]))
        assert len(cut._get_ops_details()) < len(full._get_ops_details())  # noqa: SLF001 (the layers below: not run)
        cut.set_tensor(cut.get_input_details()[0]["index"], crops[:1])
        cut.invoke()
        for k in level:
            t = int(ops[k]["outputs"][0])
            assert int(cut_ops[k]["outputs"][0]) == t
            assert np.array_equal(cut.get_tensor(t), full.get_tensor(t)), (level, k)
