"""Model registry: ``create_model(name, **kw)`` and ``list_models(pattern)``, as in timm."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

from .squeezenet import Fire, MetaParameters, SqueezeNet, min_input_size

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(KeyError):
    """No model is registered under the requested name."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its builder (e.g. ``num_classes``)."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"Unknown model {name!r}: one of {', '.join(list_models())} expected")
    return _REGISTRY[name](**kwargs)


@register_model
def squeezenet1_0(**kw) -> SqueezeNet:
    return SqueezeNet("1_0", **kw)


@register_model
def squeezenet1_1(**kw) -> SqueezeNet:
    return SqueezeNet("1_1", **kw)


@register_model
def squeezenet1_0_simple_bypass(**kw) -> SqueezeNet:
    return SqueezeNet("1_0", bypass="simple", **kw)


@register_model
def squeezenet1_0_complex_bypass(**kw) -> SqueezeNet:
    return SqueezeNet("1_0", bypass="complex", **kw)


@register_model
def squeezenet1_1_simple_bypass(**kw) -> SqueezeNet:
    return SqueezeNet("1_1", bypass="simple", **kw)


@register_model
def squeezenet_custom(base_e: int = 128, incr_e: int = 128, pct_3x3: float = 0.5, freq: int = 2,
                      sr: float = 0.125, version: str = "1_0", **kw) -> SqueezeNet:
    """A SqueezeNet whose fire widths come from the paper's metaparameters."""
    meta = MetaParameters(base_e=base_e, incr_e=incr_e, pct_3x3=pct_3x3, freq=freq, sr=sr)
    return SqueezeNet(version, meta=meta, **kw)


__all__ = ["Fire", "MetaParameters", "SqueezeNet", "UnknownModelError", "create_model", "list_models",
           "min_input_size", "register_model"]
