import pytest
import torch

from convert.models import MetaParameters, UnknownModelError, create_model, list_models


@pytest.mark.parametrize("name, params", [("squeezenet1_0", 1_248_424), ("squeezenet1_1", 1_235_496)])
def test_parameter_counts(name, params):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_torchvision_key_names():
    keys = list(create_model("squeezenet1_0").state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"]
    assert "features.3.squeeze.weight" in keys and "features.12.expand3x3.bias" in keys
    assert keys[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    keys11 = create_model("squeezenet1_1").state_dict()
    assert keys11["features.0.weight"].shape == (64, 3, 3, 3)
    assert "features.12.expand1x1.weight" in keys11


@pytest.mark.parametrize("name", ["squeezenet1_0_simple_bypass", "squeezenet1_0_complex_bypass",
                                  "squeezenet1_1_simple_bypass"])
@pytest.mark.parametrize("size", [224, 227])
def test_bypass_variants_run(name, size):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_bypass_shortcuts_where_the_paper_puts_them():
    simple = create_model("squeezenet1_0_simple_bypass")
    fires = [m for m in simple.features if hasattr(m, "shortcut")]
    # identity around fire3, fire5, fire7, fire9 (input width == output width)
    assert [f.shortcut is not None for f in fires] == [False, True, False, True, False, True, False, True]
    complex_ = create_model("squeezenet1_0_complex_bypass")
    convs = [type(f.shortcut).__name__ for f in complex_.features if hasattr(f, "shortcut")]
    assert convs == ["Conv2d", "Identity"] * 4


def test_metaparameters_default_to_v1_0_widths():
    widths = MetaParameters().fire_widths()
    assert widths == [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
                      (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]
    custom = create_model("squeezenet_custom", pct_3x3=0.75, sr=0.25)
    assert custom.features[3].squeeze.out_channels == 32
    assert custom.features[3].expand3x3.out_channels == 96


def test_registry_errors():
    assert "squeezenet1_0" in list_models() and list_models("*bypass") == sorted(list_models("*bypass"))
    with pytest.raises(UnknownModelError, match="squeezenet2_0"):
        create_model("squeezenet2_0")
    with pytest.raises(ValueError, match="1_0 or 1_1 expected"):
        from convert.models import SqueezeNet
        SqueezeNet("2_0")


def test_bypass_variants_start_at_v1_0s_scale():
    """Without batch normalization, a bypass that doubles the activations at every fire module kills
    the network in its first epoch (at 4.96x and 53x v1.0's scale they did); the bypass variants start
    no larger than 2x v1.0's activation scale, and not vanishing."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    scales = {}
    for name in ("squeezenet1_0", "squeezenet1_0_simple_bypass", "squeezenet1_0_complex_bypass"):
        torch.manual_seed(1)
        with torch.no_grad():
            scales[name] = float(create_model(name, num_classes=10).eval().features(x).std())
    base = scales.pop("squeezenet1_0")
    assert all(0.05 * base < s < 2.0 * base for s in scales.values()), (base, scales)
