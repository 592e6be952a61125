"""The model a run starts from: Deep Compression / named weights, none, or a checkpoint; the new
classifier; and the preprocessing record that goes with it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from edge_runtime.flags import resize_text
from edge_runtime.preprocess import Preprocessing, PreprocessingError

from ..errors import ConvertError, TrainError
from ..presets import at_input_size
from . import checkpoint as ckpt
from .options import TrainOptions

# A new classifier starts with every class's output above ReLU's threshold for every image. With
# SqueezeNet's bias of 0 about half the images of each class fall below it at once; a class whose
# own images all do is pushed lower by the others' and never recovers (seen on 2,000 Fashion-MNIST
# images: "Sandal" never predicted). Softmax ignores the common offset.
HEAD_BIAS = 1.0
INPUT_SCALE = 58.0  # pixel std of ImageNet photos (torchvision's normalization: 0.226 x 255)


def init_model(o: TrainOptions, classes: list[str]) -> tuple[nn.Module, Preprocessing, str, bool, dict]:
    """(model, preprocessing, arch, head is new, arch kwargs) from --weights: a named source, none, or a file."""
    from ..models import ModelArgumentError, UnknownModelError, create_model
    from ..weights import ALIASES, WEIGHTS, load_model

    n = len(classes)
    source = o.weights
    init_state, init_labels, pp_base, arch = None, None, None, o.arch
    kwargs = dict(o.arch_kwargs or {})
    if source == "none":
        pp_base = WEIGHTS["squeezenet1_0"].preprocessing  # ImageNet statistics, RGB
        arch = arch or "squeezenet1_0"
    elif Path(source).is_file() and _is_training_file(Path(source)):
        saved = ckpt.load(Path(source))
        rec = saved["record"]
        if arch and arch != rec["arch"]:
            raise TrainError(f"--weights {source} is a {rec['arch']} checkpoint, not --arch {arch}")
        arch = rec["arch"]
        saved_kwargs = dict(rec.get("arch_kwargs") or {})
        if o.arch_kwargs is not None and dict(o.arch_kwargs) != saved_kwargs:
            raise TrainError(f"--weights {source} is a {arch} checkpoint built with {saved_kwargs}, not {o.arch_kwargs}")
        kwargs = saved_kwargs
        pp_base = Preprocessing.from_dict(rec["preprocessing"])
        init_state, init_labels = saved["model"], list(rec["labels"])
    else:
        named = ALIASES.get(source, source) in WEIGHTS and not Path(source).exists()
        # named ImageNet weights load in their own architecture; a variant of it (e.g. a bypass
        # variant) takes every weight it shares with it below
        base, record = load_model(source, None if named else arch)
        arch, pp_base = arch or record.arch, record.preprocessing
        init_state, init_labels = base.state_dict(), list(record.labels)
    try:
        model = create_model(arch, num_classes=n, **kwargs)
    except (UnknownModelError, ModelArgumentError, TypeError) as e:  # TypeError: num_classes in the kwargs
        raise TrainError(f"--arch {arch} {kwargs or ''}: {e}") from None
    new_head = True
    with torch.no_grad():
        model.classifier[1].bias.fill_(HEAD_BIAS)
    if init_state is not None:
        own = model.state_dict()
        same_classes = init_labels == classes
        keep = {k: v for k, v in init_state.items()
                if k in own and (same_classes or not k.startswith("classifier."))}
        wrong = [k for k, v in keep.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise TrainError(f"--weights {source}: {wrong[0]} has shape {tuple(keep[wrong[0]].shape)}, "
                             f"{arch} expects {tuple(own[wrong[0]].shape)}")
        missing = [k for k in own if k not in keep and not k.startswith("classifier.") and ".shortcut." not in k]
        if missing:
            raise TrainError(f"--weights {source}: no value for {missing[0]} of {arch}")
        # complex bypass 1x1 convolutions that the source does not have start from their initialization
        own.update(keep)
        model.load_state_dict(own)
        new_head = not same_classes
        if new_head and max(pp_base.std) < INPUT_SCALE / 4:
            model, pp_base = _normalize_input_scale(model, pp_base)
    size = o.input_size or pp_base.input_size[0]
    resize = o.resize
    if isinstance(resize, int) and not isinstance(resize, bool):  # a run recorded before --resize took N|HxW:
        resize = (resize, resize if pp_base.resize[1] else 0)  # its kind followed the weights' own resize
    if resize is not None and not (isinstance(resize, (tuple, list)) and len(resize) == 2
                                   and all(isinstance(v, int) and not isinstance(v, bool) for v in resize)):
        raise TrainError(f"--resize {resize!r}: N or HxW expected")
    try:  # the weights' resize-to-crop ratio at the new size, unless --resize says otherwise
        pp = at_input_size(pp_base, (size, size))
        if resize:  # (N, 0): the shorter side to N (aspect kept); (H, W): exactly
            pp = dataclasses.replace(pp, resize=tuple(resize))
    except PreprocessingError as e:
        raise TrainError(f"--input-size {size}" + (f" / --resize {resize_text(resize)}" if resize else "")
                         + f": {e}") from None
    _check_input_size(model, arch, size)
    return model, pp, arch, new_head, kwargs


def _check_input_size(model: nn.Module, arch: str, size: int) -> None:
    """An input too small for the network's strides is one line here: a SqueezeNet's smallest size said
    (:func:`convert.models.input_too_small`), else what one forward pass at ``size`` raised."""
    from ..models import SqueezeNet, input_too_small

    problem = input_too_small(model.version, size) if isinstance(model, SqueezeNet) else None
    if problem:
        raise TrainError(f"--input-size {size}: too small for {arch}: {problem}")
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise TrainError(f"--input-size {size}: too small for {arch} ({first})") from None
    finally:
        model.train(training)


def _normalize_input_scale(model: nn.Module, pp: Preprocessing) -> tuple[nn.Module, Preprocessing]:
    """The same network with every activation divided by INPUT_SCALE, for weights trained on raw
    pixel differences (Caffe's mean subtraction, std 1: features reach several hundred).

    A ReLU network is positively homogeneous when its biases scale too: dividing the input and
    every bias by c divides every activation by c, so the features are exactly the old ones / c.
    A new classifier (initialized N(0, 0.01)) on features of that size starts with logits around
    1 instead of around 10, and its gradients are not c^2 too large (at the raw scale the first
    SGD steps push every class below ReLU's threshold and the network stops learning).
    """
    c = INPUT_SCALE / max(pp.std)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") and not name.startswith("classifier."):
                p.div_(c)
    return model, dataclasses.replace(pp, std=tuple(s * c for s in pp.std))


def _is_training_file(path: Path) -> bool:
    from ..weights import read_weights_only

    if path.suffix not in (".pt", ".pth"):
        return False
    try:
        return ckpt.is_training_checkpoint(read_weights_only(path))
    except ConvertError:
        return False
