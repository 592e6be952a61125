"""Model registry: ``create_model(name, **kw)`` and ``list_models(pattern)``, as in timm."""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch
from torch import nn

from .squeezenet import Fire, MetaParameters, SqueezeNet, input_too_small, min_input_size

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(KeyError):
    """No model is registered under the requested name."""

    def __str__(self) -> str:
        return str(self.args[0])


class ModelArgumentError(ValueError):
    """A registered builder refused its arguments, or they describe a model above :data:`MAX_PARAMETERS`."""


# 80x SqueezeNet v1.0 (1,248,424 parameters) and 400 MB of float32 weights: far above every variant of the
# paper's design space, far below what an untrusted record's sizes could make us allocate (base_e=1e9: 48 GB).
MAX_PARAMETERS = 100_000_000


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def check_model(name: str, **kwargs) -> int:
    """Parameter count of ``create_model(name, **kwargs)``, found by building it on PyTorch's meta device
    (shapes only, no memory), so arguments from an untrusted record are checked before anything is allocated.

    Raises:
        UnknownModelError: no model of that name.
        ModelArgumentError: the builder refuses the arguments (an unknown name, a value of the wrong kind
            or out of range), or the model would have more than :data:`MAX_PARAMETERS` parameters.
    """
    if name not in _REGISTRY:
        raise UnknownModelError(f"Unknown model {name!r}: one of {', '.join(list_models())} expected")
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in _REGISTRY[name](**kwargs).parameters())
    except (TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as e:  # the builder's refusal
        raise ModelArgumentError(str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__) from None
    if count > MAX_PARAMETERS:
        raise ModelArgumentError(f"{count:,} parameters, at most {MAX_PARAMETERS:,} expected")
    return count


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its builder (e.g. ``num_classes``).

    Raises:
        UnknownModelError, ModelArgumentError: as :func:`check_model`, before any weights are allocated.
    """
    check_model(name, **kwargs)
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


__all__ = ["MAX_PARAMETERS", "Fire", "MetaParameters", "ModelArgumentError", "SqueezeNet", "UnknownModelError",
           "check_model", "create_model", "input_too_small", "list_models", "min_input_size", "register_model"]
