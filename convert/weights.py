"""Weights records (what the weights need: preprocessing, labels, hash) and weight resolution.

A named source is looked up, in order: an explicit path; the directory named by the environment
variable ``SQUEEZENET_EDGE_WEIGHTS_DIR``; the per-user cache; a download from the record's public URL
(verified against its sha256, written atomically into the cache). Checkpoints are untrusted input:
``torch.load(..., weights_only=True)`` only, shapes checked against the chosen architecture.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edge_runtime.fileio import FileTooLarge, atomic_write, read_bounded, sha256_file
from edge_runtime.labels import imagenet_classes
from edge_runtime.preprocess import Preprocessing

from .errors import WeightsError
from .fetch import DigestMismatch, fetch_bytes
from .models import ModelArgumentError, UnknownModelError, check_model, create_model
from .presets import CAFFE_IMAGENET, TORCHVISION_IMAGENET

ENV_DIR = "SQUEEZENET_EDGE_WEIGHTS_DIR"
MAX_CHECKPOINT_BYTES = 1 << 30


@dataclass(frozen=True)
class WeightsRecord:
    """Everything needed to use a set of weights, in the spirit of torchvision's weights enums."""

    name: str
    arch: str
    preprocessing: Preprocessing
    file_name: str = ""
    url: str = ""
    sha256: str = ""  # full hex digest; or a prefix (torchvision names files by a hash prefix)
    size: int = 0
    fmt: str = "pth"  # "net" (Deep Compression), "pth" (state dict), or a container format
    arch_kwargs: dict = field(default_factory=dict)
    labels: tuple[str, ...] = field(default_factory=lambda: imagenet_classes()[1])
    wnids: tuple[str, ...] = field(default_factory=lambda: imagenet_classes()[0])
    accuracy: dict = field(default_factory=dict)
    licence: str = ""
    # Image folders that belong with these weights (a training run records its own): the converter
    # calibrates and validates on them unless told otherwise.
    calib_dir: Path | None = None
    val_dir: Path | None = None
    # How many of the weights' own labelled tuning images fall in each band of the float model's top-two
    # logit margin (convert.fidelity.MARGIN_EDGES): the converter weighs its unlabelled check views to
    # this mix when judging without --val. Measured by `python -m tools.check_reference`.
    check_reference: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.labels)


WEIGHTS: dict[str, WeightsRecord] = {
    "deep-compression": WeightsRecord(
        name="squeezenet1_0_deep_compression", arch="squeezenet1_0", preprocessing=CAFFE_IMAGENET,
        file_name="compressed_SqueezeNet.net",
        url="https://github.com/songhan/SqueezeNet-Deep-Compression/raw/master/compressed_SqueezeNet.net",
        sha256="e4ab6960ae8cd81505e1c2136921201507e930966c53deaf15862a395b3a3261", size=675763, fmt="net",
        arch_kwargs={"final_conv_padding": 1},  # Caffe's conv10 has pad: 1
        accuracy={"imagenet_top1": 57.5, "imagenet_top5": 80.3, "val500_top1": 65.4, "val500_top5": 84.6},
        licence="BSD (songhan/SqueezeNet-Deep-Compression)",
        check_reference=(11, 16, 22, 31, 170)),  # val500's tuning half (250 images)
    "squeezenet1_0": WeightsRecord(
        name="squeezenet1_0_torchvision", arch="squeezenet1_0", preprocessing=TORCHVISION_IMAGENET,
        file_name="squeezenet1_0-b66bff10.pth", url="https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth",
        sha256="b66bff10", accuracy={"imagenet_top1": 58.092, "imagenet_top5": 80.420}, licence="BSD-3-Clause"),
    "squeezenet1_1": WeightsRecord(
        name="squeezenet1_1_torchvision", arch="squeezenet1_1", preprocessing=TORCHVISION_IMAGENET,
        file_name="squeezenet1_1-b8a52dc0.pth", url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        sha256="b8a52dc0", accuracy={"imagenet_top1": 58.178, "imagenet_top5": 80.624}, licence="BSD-3-Clause"),
}
ALIASES = {"squeezenet1_0_deep_compression": "deep-compression", "deep_compression": "deep-compression"}

# Weight containers defined above this module, recognised by their first bytes:
# magic -> (format name, loader(path) -> (state dict of numpy arrays, key of WEIGHTS, arch)).
# convert/compress/container.py registers ".sqz" when imported (convert.cli imports it).
ContainerLoader = Callable[[Path], tuple[dict, str, str]]
CONTAINER_LOADERS: dict[bytes, tuple[str, ContainerLoader]] = {}


def register_container(magic: bytes, fmt: str, loader: ContainerLoader) -> None:
    """Let :func:`load_model` read files that start with ``magic`` through ``loader``."""
    CONTAINER_LOADERS[magic] = (fmt, loader)


def cache_base() -> Path:
    """The project's cache folder: ``$XDG_CACHE_HOME/squeezenet-edge`` (``~/.cache`` without it). A CI job's user
    often has no home (no ``$HOME`` and no passwd entry: ``~`` stays ``~``, a folder of that name in the working
    directory): then ``squeezenet-edge-UID/`` in the temporary folder, made private (0700) and refused unless it
    is this user's own real folder that no one else may write (another user could make it first and swap a file
    between its check and its use). The weights (:func:`cache_dir`) and the tests' data cache live in it.

    Raises:
        WeightsError: that temporary folder is not this user's private folder.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(base):  # (the XDG specification ignores a relative one)
        return Path(base) / "squeezenet-edge"
    home = os.path.expanduser("~")
    if os.path.isabs(home):
        return Path(home) / ".cache" / "squeezenet-edge"
    private = Path(tempfile.gettempdir()) / f"squeezenet-edge-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        private.mkdir(mode=0o700)
    st = private.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WeightsError(f"{private}: not a private folder of this user (no home to keep a cache in); "
                           "set $XDG_CACHE_HOME to a folder of yours")
    return private / "squeezenet-edge"


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``weights/`` in :func:`cache_base`."""
    return cache_base() / "weights"


def _verify(path: Path, record: WeightsRecord) -> str:
    digest = sha256_file(path)
    if record.sha256 and not digest.startswith(record.sha256):
        raise WeightsError(f"{path}: sha256 {digest[:16]}... does not match {record.name}'s "
                           f"{record.sha256[:16]}...: a corrupt or different file; delete it and retry")
    return digest


def _download(url: str, dest: Path, record: WeightsRecord,
              fetch: Callable[[str], bytes] | None) -> None:
    print(f"downloading {record.name} from {url} ...", file=sys.stderr)
    try:
        if fetch is not None:
            data = fetch(url)
        else:
            data = fetch_bytes(url, MAX_CHECKPOINT_BYTES)
    except OSError as e:
        raise WeightsError(
            f"{record.name} is not available offline and the download failed ({e}); put "
            f"{record.file_name} in {cache_dir()} or in a directory named by ${ENV_DIR}, "
            f"or pass its path with --weights") from None
    except DigestMismatch as e:
        raise WeightsError(str(e)) from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise WeightsError(f"{url}: more than {MAX_CHECKPOINT_BYTES} bytes, refusing")
    try:
        atomic_write(dest, data, check=lambda tmp: _verify(tmp, record))
    except OSError as e:  # a CI job's home is often read-only
        raise WeightsError(f"{dest.parent}: cannot keep the downloaded {record.file_name} there ({e.strerror}); "
                           f"set $XDG_CACHE_HOME to a writable folder, or put the file in a directory named by "
                           f"${ENV_DIR}") from None


def resolve(name: str, download: bool = True, fetch: Callable[[str], bytes] | None = None) -> Path:
    """Path of a named source's file: $SQUEEZENET_EDGE_WEIGHTS_DIR, then the cache, then download.

    Raises:
        WeightsError: unknown name, wrong sha256, or not available offline (says where to put it).
    """
    record = WEIGHTS.get(ALIASES.get(name, name))
    if record is None:
        raise WeightsError(f"unknown weights {name!r}: a path or one of {', '.join(WEIGHTS)} expected")
    candidates = []
    if os.environ.get(ENV_DIR):
        candidates.append(Path(os.environ[ENV_DIR]) / record.file_name)
    candidates.append(cache_dir() / record.file_name)
    for path in candidates:
        if path.is_file():
            _verify(path, record)
            return path
    if not download:
        raise WeightsError(f"{record.name} not found; put {record.file_name} in {cache_dir()} or in a "
                           f"directory named by ${ENV_DIR}, or pass its path with --weights")
    dest = cache_dir() / record.file_name
    _download(record.url, dest, record, fetch)
    return dest


def read_weights_bytes(path: Path) -> bytes:
    """The bytes of a weights file (``.net``, torch checkpoint), refused above :data:`MAX_CHECKPOINT_BYTES`.

    Raises:
        WeightsError: too large.
    """
    try:
        return read_bounded(path, MAX_CHECKPOINT_BYTES)
    except FileTooLarge as e:
        raise WeightsError(f"{e}, refusing") from None


def read_weights_only(path: Path):
    """The objects of an untrusted torch file (tensors and plain data only: never unpickles code).

    Raises:
        WeightsError: too large, or not loadable with ``weights_only=True``.
    """
    raw = read_weights_bytes(path)
    if not raw.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
        raise WeightsError(f"{path}: not a PyTorch checkpoint (.pt/.pth: a zip archive or a pickle; "
                           f"the file starts with {raw[:8]!r})")
    data = io.BytesIO(raw)
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols: the refusal below says enough
            warnings.simplefilter("ignore")
            return torch.load(data, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or hostile files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if first.startswith("Weights only load failed"):  # torch's text goes on to suggest unpickling it
            first = "it holds Python objects other than tensors and plain data; they are never unpickled"
        raise WeightsError(f"{path}: not a loadable weights-only checkpoint ({first})") from None


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: a state dict of tensors expected")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def apply_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """Copy weights into the model; errors name the first mismatching key with both shapes."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise WeightsError(f"{source}: missing key {key!r} (shape {tuple(value.shape)}) for this model")
        got = tuple(np.shape(state[key]))
        if got != tuple(value.shape):
            raise WeightsError(f"{source}: {key} has shape {got}, the model expects {tuple(value.shape)} "
                               "(wrong --arch or num_classes?)")
    extra = [k for k in state if k not in own]
    if extra:
        raise WeightsError(f"{source}: unexpected key {extra[0]!r} for this model (wrong --arch?)")
    for key in own:
        value = torch.as_tensor(np.asarray(state[key])) if not isinstance(state[key], torch.Tensor) else state[key]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{source}: {key} holds NaN or Inf (finite weights expected)")
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
                           for k, v in state.items()})


def _read_state(path: Path, record: WeightsRecord | None) -> tuple[dict, WeightsRecord | None]:
    from .deepcompression import decode_net

    with open(path, "rb") as f:
        head = f.read(16)
    for magic, (fmt, loader) in CONTAINER_LOADERS.items():
        if head.startswith(magic):
            state, key, arch = loader(path)
            base = WEIGHTS.get(key)
            if base is None:
                raise WeightsError(f"{path}: the {fmt} container names weights record {key!r}: one of "
                                   f"{', '.join(WEIGHTS)} expected")
            return state, dataclasses.replace(base, name=f"{base.name}_compressed", arch=arch, fmt=fmt)
    if path.suffix == ".net" or (record is not None and record.fmt == "net"):
        return decode_net(read_weights_bytes(path)).state_dict(), record or WEIGHTS["deep-compression"]
    obj = read_weights_only(path)
    return _state_dict(obj, path), training_record(obj, path) or record


# The record ``python -m convert train`` saves beside the state dict (convert/train/checkpoint.py).
TRAINING_FORMAT = "squeezenet-edge/train-checkpoint"
MAX_LABELS, MAX_LABEL_CHARS = 100_000, 200


def training_record(obj, path: Path) -> WeightsRecord | None:
    """The weights record of a training run's checkpoint (None for other files).

    The record is untrusted: every field is checked for type and size. Its calibration and
    validation folders (a sample of the run's training images, its validation split) become the
    converter's defaults, so a trained model is calibrated on images of its own domain.

    Raises:
        WeightsError: a training record with a malformed field.
    """
    rec = obj.get("record") if isinstance(obj, dict) else None
    if not isinstance(rec, dict) or rec.get("format") != TRAINING_FORMAT:
        return None

    def bad(field_name: str, expected: str):
        return WeightsError(f"{path}: training record field {field_name!r} malformed ({expected} expected)")

    arch, labels, kwargs = rec.get("arch"), rec.get("labels"), rec.get("arch_kwargs") or {}
    if not isinstance(arch, str) or not 0 < len(arch) <= 100:
        raise bad("arch", "a registered architecture name")
    if not isinstance(labels, list) or not 1 <= len(labels) <= MAX_LABELS or not all(
            isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS and x.isprintable() for x in labels):
        raise bad("labels", f"1 to {MAX_LABELS} printable class names of at most {MAX_LABEL_CHARS} characters")
    if not isinstance(kwargs, dict) or len(kwargs) > 20 or not all(
            isinstance(k, str) and isinstance(v, (int, float, str, bool)) for k, v in kwargs.items()):
        raise bad("arch_kwargs", "at most 20 named numbers or strings")
    if "num_classes" in kwargs:
        raise WeightsError(f"{path}: training record field 'arch_kwargs' holds num_classes "
                           f"{kwargs['num_classes']!r}: the labels give the class count ({len(labels)})")
    try:  # the architecture it describes, checked (and its size bounded) before anything is built
        check_model(arch, num_classes=len(labels), **kwargs)
    except UnknownModelError as e:
        raise WeightsError(f"{path}: training record field 'arch' malformed ({e})") from None
    except ModelArgumentError as e:
        raise WeightsError(f"{path}: training record field 'arch_kwargs' {kwargs} refused by {arch}: {e}") from None
    try:
        pp = Preprocessing.from_dict(rec.get("preprocessing"))
    except ValueError as e:
        raise WeightsError(f"{path}: training record: {e}") from None
    folders = {}
    for key in ("calib_dir", "val_dir"):
        value = rec.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 4096):
            raise bad(key, "a folder path")
        folders[key] = _run_folder(Path(value), path) if value else None
    summary = rec.get("summary") if isinstance(rec.get("summary"), dict) else {}
    accuracy = {k: summary[k] for k in ("val_top1", "val_top5") if isinstance(summary.get(k), (int, float))}
    name = rec.get("name") if isinstance(rec.get("name"), str) and 0 < len(rec["name"]) <= 100 else path.stem
    return WeightsRecord(name=name, arch=arch, preprocessing=pp, arch_kwargs=dict(kwargs), labels=tuple(labels),
                         wnids=(), accuracy=accuracy, **folders)


def _run_folder(recorded: Path, checkpoint: Path) -> Path:
    """A folder a training record names, or, when it is gone and it was one of the run's own (``calib``,
    ``val``), that folder beside the checkpoint: a run folder copied to another machine (the CI that
    converts it) still converts with no other flag."""
    here = checkpoint.parent / recorded.name
    if not recorded.is_dir() and recorded.name in ("calib", "val") and here.is_dir():
        return here
    return recorded


def load_model(source: str, arch: str | None = None) -> tuple[nn.Module, WeightsRecord]:
    """Build a model and load weights from a named source or a file.

    Args:
        source: a name from :data:`WEIGHTS` (e.g. "deep-compression"), or a path to a ``.net`` file,
            a ``.pth``/``.pt`` state dict, or a registered container.
        arch: architecture for a plain checkpoint (default: the record's, else squeezenet1_0).

    Returns:
        (model, record) with ``record.sha256`` the full digest of the file actually loaded.

    Raises:
        WeightsError: missing, corrupt, wrong hash, or not fitting the architecture.
    """
    named = ALIASES.get(source, source)
    if named in WEIGHTS and not Path(source).exists():
        record: WeightsRecord | None = WEIGHTS[named]
        path = resolve(named)
    else:
        path = Path(source)
        if not path.is_file():
            raise WeightsError(f"{source}: no such weights file (or a name: {', '.join(WEIGHTS)})")
        record = next((r for r in WEIGHTS.values() if r.file_name == path.name), None)
    state, record = _read_state(path, record)
    if record is None:
        classes = state.get("classifier.1.weight")
        n = int(classes.shape[0]) if classes is not None else 1000
        labels = imagenet_classes()[1] if n == 1000 else tuple(str(i) for i in range(n))
        wnids = imagenet_classes()[0] if n == 1000 else ()
        record = WeightsRecord(name=path.stem, arch=arch or "squeezenet1_0", preprocessing=TORCHVISION_IMAGENET,
                               labels=labels, wnids=wnids)
    arch = arch or record.arch
    try:
        model = create_model(arch, num_classes=record.num_classes, **record.arch_kwargs)
    except UnknownModelError as e:
        raise WeightsError(f"{path}: {e}") from None
    except ModelArgumentError as e:
        raise WeightsError(f"{path}: {arch} {record.arch_kwargs}: {e}") from None
    apply_state_dict(model, state, str(path))
    record = dataclasses.replace(record, arch=arch, sha256=sha256_file(path))
    return model.eval(), record
