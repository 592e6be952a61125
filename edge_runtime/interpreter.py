"""Find and create a TFLite interpreter: ai-edge-litert, then tflite-runtime, then tf.lite."""
from __future__ import annotations

import ctypes
import importlib
from typing import Any

import numpy as np

# (module, human name, pip package) in order of preference.
_BACKENDS = (
    ("ai_edge_litert.interpreter", "ai-edge-litert", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime", "tflite-runtime"),
    ("tensorflow.lite.python.interpreter", "tensorflow", "tensorflow"),  # tf.lite.Interpreter
)
EDGETPU_LIBRARY = "libedgetpu.so.1"


class InterpreterUnavailable(RuntimeError):
    """No TFLite interpreter package is installed, or a delegate cannot be loaded."""


def find_backend(preferred: str | None = None) -> tuple[Any, str]:
    """The first importable interpreter module and its name; ``preferred`` restricts the search.

    Raises:
        InterpreterUnavailable: none is installed (the message names what to install).
    """
    tried = []
    for module, name, _ in _BACKENDS:
        if preferred and preferred != name:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            tried.append(f"{name} ({e.__class__.__name__})")
            continue
        return mod, name
    want = preferred or "one of ai-edge-litert, tflite-runtime, tensorflow"
    raise InterpreterUnavailable(
        f"no TFLite interpreter found ({want}); install one: pip install ai-edge-litert "
        f"(or tflite-runtime on numpy<2). Tried: {', '.join(tried) or 'none'}")


def backend_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    for dist in {"tensorflow": ("tensorflow", "tensorflow-cpu")}.get(name, (name,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def create_interpreter(model_path: str, threads: int | None = None, edgetpu: bool = False,
                       backend: str | None = None, xnnpack: bool | None = None,
                       model_content: bytes | None = None) -> tuple[Any, str, bool]:
    """An allocated interpreter for ``model_path`` (or for ``model_content``, the file's bytes as already
    read and checked: ``model_path`` then only names it), the backend name, and whether XNNPACK runs it.

    TFLite's builtin kernels run every op: they compute the int8 reference arithmetic (a fixed-point
    multiply, then a rounding shift), bit for bit the same in ai-edge-litert, tflite-runtime 2.14 (which runs
    int8 on them even by default: its XNNPACK takes float ops only) and tf.lite, so the decision the converter
    validated is the one every device makes. With ``xnnpack`` the interpreter's default resolver applies
    XNNPACK where it has it (ai-edge-litert, tf.lite): 2-3x as fast for int8 on x86, but it
    requantizes with one float rounding, and about 2% of decisions differ from the builtin kernels'.
    ``xnnpack=None`` (the default) chooses by the model: the builtin kernels for a quantized model,
    XNNPACK for a float one (float kernels differ in the last bits only, and XNNPACK is 3-4x as fast
    there; tflite-runtime 2.14 applies it to float models by default too).
    With ``edgetpu`` the Edge TPU delegate (``libedgetpu.so.1``) is loaded, or InterpreterUnavailable
    says why it cannot be.

    Raises:
        InterpreterUnavailable: no interpreter package, or the delegate cannot load.
        ValueError: the file is not a model the interpreter can load.
    """
    mod, name = find_backend(backend)
    Interpreter = mod.Interpreter
    delegates = []
    if edgetpu:
        try:
            ctypes.CDLL(EDGETPU_LIBRARY)  # fail here, before the interpreter's Delegate half-exists
            delegates.append(mod.load_delegate(EDGETPU_LIBRARY))
        except (ValueError, OSError, AttributeError) as e:
            raise InterpreterUnavailable(
                f"cannot load the Edge TPU delegate {EDGETPU_LIBRARY} ({e}); install the Edge TPU "
                "runtime (libedgetpu1-std) and plug in the device, or run without --edgetpu") from None
    source = {"model_content": model_content} if model_content is not None else {"model_path": str(model_path)}

    def load(with_xnnpack: bool):
        kwargs = {}
        if not with_xnnpack:
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        interp = Interpreter(**source, num_threads=threads, experimental_delegates=delegates or None, **kwargs)
        interp.allocate_tensors()
        return interp

    with_xnnpack = bool(xnnpack)
    try:
        interp = load(with_xnnpack)
        quantized = is_quantized(interp)
        if xnnpack is None and not delegates and not quantized:
            with_xnnpack = True
            interp = load(True)
        if name == "tflite-runtime" and quantized:
            with_xnnpack = False  # its XNNPACK takes float ops only: the builtin kernels run the int8 model
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ValueError(f"{model_path}: the interpreter cannot load this model ({first})") from None
    return interp, name, with_xnnpack


def is_quantized(interpreter) -> bool:
    """Whether any tensor of the model holds quantized integers (int8 / uint8 / int16 with a scale, per
    tensor or per channel: a dynamic-range model's int8 weights count too)."""
    def scaled(d) -> bool:
        per_channel = d.get("quantization_parameters", {}).get("scales")
        return d["quantization"][0] != 0 or (per_channel is not None and np.size(per_channel) > 0)

    return any(np.dtype(d["dtype"]) in (np.int8, np.uint8, np.int16) and scaled(d)
               for d in interpreter.get_tensor_details())
