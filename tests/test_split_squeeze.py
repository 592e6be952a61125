"""The split squeeze output (convert/split_squeeze.py) on the real model and real photos: the float
function is unchanged and the tensor the int8 model quantizes covers half the range."""
import pytest
import torch

from convert.equalize import equalize_from_ranges
from convert.split_squeeze import RELU6, split_squeezes, thresholds
from convert.statistics import shared_statistics


def _output(module, model, x):
    out = []
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return logits, out[0]


def test_split_is_exact_in_float_and_halves_the_quantized_range(float_model, photo_batches):
    from convert.pixel_model import PixelModel

    model, record = float_model
    folded = PixelModel(model, record.preprocessing).folded()
    fit, held = photo_batches
    ranges, _ = shared_statistics(folded, [fit[i:i + 8] for i in range(0, len(fit), 8)], want_moments=False)
    equalized, scales = equalize_from_ranges(folded, ranges)

    split = thresholds(equalized, ranges, scales, 1)
    assert list(split) == ["features.3"]  # the first fire
    converted = split_squeezes(equalized, split)
    assert converted.features[3].expand3x3.weight.shape[1] == 32 and equalized.features[3].expand3x3.in_channels == 16

    logits, before = _output(equalized.features[3].squeeze_activation, equalized, held)
    split_logits, after = _output(converted.features[3].squeeze, converted, held)
    assert torch.allclose(split_logits, logits, rtol=1e-4, atol=1e-3 * float(logits.abs().max()))
    # the halves add up to the original activation (the high half is stored in reverse channel order)
    t = split["features.3"]
    low, high = after[:, :16] * t / RELU6, after[:, 16:].flip(1) * t / RELU6
    assert float(low.max()) <= t * (1 + 1e-5)
    assert torch.allclose(low + high, before, rtol=1e-4, atol=1e-3 * float(before.max()))
    # on the views its range is measured on, the tensor the int8 model quantizes spans half the original's
    _, before = _output(equalized.features[3].squeeze_activation, equalized, fit)
    _, after = _output(converted.features[3].squeeze, converted, fit)
    q = lambda v: float(torch.quantile(v.flatten()[::7], 0.9999))  # noqa: E731
    assert 0.4 <= q(after * t / RELU6) / q(before) <= 0.6, (q(after * t / RELU6), q(before))


def test_no_split_leaves_the_model_as_it_is(float_model):
    model, _ = float_model
    assert split_squeezes(model, {}) is model


@pytest.mark.parametrize("arch", ["squeezenet1_1", "squeezenet1_0_simple_bypass", "squeezenet1_0_complex_bypass"])
def test_split_is_exact_for_the_other_family_members(arch, photo_batches):
    """v1.1 and the bypass variants (no equalization: a bypass adds tensors from two places)."""
    from convert import models

    torch.manual_seed(0)
    model = getattr(models, arch)(num_classes=10).eval()
    fit, held = photo_batches
    ranges, _ = shared_statistics(model, [fit[i:i + 8] for i in range(0, len(fit), 8)], want_moments=False)
    split = thresholds(model, ranges, {}, 2)
    assert len(split) == 2
    with torch.no_grad():
        a, b = model(held), split_squeezes(model, split)(held)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
