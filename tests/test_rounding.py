"""GPTQ weight rounding on the real model and real photos: weights land on TFLite's int8 grid and
the convolutions' output error on photos not used for rounding is lower than with nearest rounding."""
import torch
from torch import nn
from torch.nn import functional as F

from convert.rounding import QMAX, _nearest, gptq_round, input_moments


def test_gptq_rounding_lands_on_the_int8_grid_and_beats_nearest(float_model, photo_batches):
    from convert.pixel_model import PixelModel

    model, record = float_model
    pixel = PixelModel(model, record.preprocessing).folded()  # as the converter rounds it: pixels in
    fit, held = photo_batches

    rounded, summary = gptq_round(pixel, [fit[i:i + 8] for i in range(0, len(fit), 8)])

    convs = [m for m in pixel.modules() if isinstance(m, nn.Conv2d)]
    new = [m for m in rounded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 26 and summary["weight_rounding"]["layers"] == 26
    for a, b in zip(convs, new):
        w, q = a.weight.detach().reshape(a.out_channels, -1), b.weight.detach().reshape(b.out_channels, -1)
        scale = w.abs().max(1).values / QMAX
        live = scale > 0
        assert torch.equal(q.abs().max(1).values[live], w.abs().max(1).values[live])  # scale kept
        k = q[live] / scale[live, None]
        assert torch.allclose(k, torch.round(k), atol=1e-3) and k.abs().max() <= QMAX + 1e-3
        assert torch.equal(b.bias, a.bias)
    assert not torch.equal(convs[0].weight, new[0].weight)  # the original model is untouched, the copy changed

    # on held-out photos, every layer's output error (inputs from the float model) beats nearest rounding
    moments = input_moments(pixel, convs, [held])
    worse = []
    for a, b in zip(convs, new):
        H = moments[a]
        d_g = (a.weight - b.weight).detach().reshape(a.out_channels, -1).double()
        d_n = (a.weight - _nearest(a.weight)).detach().reshape(a.out_channels, -1).double()
        err_g = float(torch.einsum("oi,ij,oj->", d_g, H, d_g))
        err_n = float(torch.einsum("oi,ij,oj->", d_n, H, d_n))
        if err_g >= err_n:
            worse.append(a)
    assert not worse, f"{len(worse)} layers rounded worse than nearest on held-out photos"

    # the first convolution sees positive pixels: its rounding errors add up; GPTQ removes most of that
    x = held
    conv1, conv1_q = convs[0], new[0]
    f = F.conv2d(x, conv1.weight, conv1.bias, conv1.stride, conv1.padding)
    g = F.conv2d(x, conv1_q.weight, conv1_q.bias, conv1_q.stride, conv1_q.padding)
    n = F.conv2d(x, _nearest(conv1.weight), conv1.bias, conv1.stride, conv1.padding)
    gain_db = 10 * torch.log10(((n - f) ** 2).mean() / ((g - f) ** 2).mean())
    assert gain_db > 6.0, f"GPTQ improves conv1's output error by only {gain_db:.1f} dB over nearest"
