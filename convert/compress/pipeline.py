"""``compress``: prune -> share weights -> (fine-tune centroids) -> Huffman container, measured."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.fileio import atomic_write

from ..errors import ConvertError
from ..outputs import check_output_path
from . import container as sqz
from .share import covers, for_layer, layer_spec, prune_mask, share_layer


DEFAULT_BUDGET = 500_000
BUDGET_VIEWS = 32  # unlabelled calibration views the per-layer distortion is measured on


@dataclass
class CompressOptions:
    weights: str
    out: Path
    bits: str | None = None  # None: chosen per layer to fit size_budget; "8" or "8,classifier.1=6" fixes them
    size_budget: int = DEFAULT_BUDGET  # bytes of the container when bits and sparsity are chosen automatically
    sparsity: str | None = None  # "features.12.expand3x3=0.8,..." extra pruning (fraction of zeros)
    lossless: bool = False  # keep a .net release's own codebooks and codes (Huffman only)
    finetune_images: Path | None = None  # None: the converter's calibration photos
    finetune_steps: int = 150  # 0: no fine-tuning
    val: Path | None = None
    sensitivity: bool = False
    limit: int | None = None  # images of --val used for the sensitivity table
    quiet: bool = False


def _record_key(record) -> str:
    from ..weights import WEIGHTS

    base = record.name.removesuffix("_compressed")
    for key, r in WEIGHTS.items():
        if r.name == base:
            return key
    raise ConvertError(f"weights {record.name!r} have no named record (deep-compression, squeezenet1_0, ...): "
                       "a container must name the preprocessing its weights expect")


def _conv_names(model) -> list[str]:
    return [k[:-7] for k, v in model.state_dict().items() if k.endswith(".weight") and v.dim() == 4]


def automatic(opts: CompressOptions) -> bool:
    """Bits and pruning chosen to fit the budget (no --bits, --sparsity or --lossless given)."""
    return opts.bits is None and opts.sparsity is None and not opts.lossless


def budget_layers(model, record, budget: int, progress=lambda m: None) -> tuple[list[sqz.SharedLayer], dict]:
    """Per-layer bits and pruning fitted to ``budget`` bytes by output distortion on unlabelled views
    of the converter's calibration photos (the ones it does not hold out); no label is read."""
    import torch

    from ..calibration import calibration_set
    from ..calibration_data import default_calib_dir
    from ..pixel_model import PixelModel
    from .budget import choose_layers

    crops = calibration_set(default_calib_dir(), record.preprocessing, scales=(1.0, 1.3)).views
    crops = crops[::max(1, -(-len(crops) // BUDGET_VIEWS))]
    x = PixelModel(model, record.preprocessing).normalize(
        torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32)))  # the bare model's input
    header = len(sqz.encode(sqz.Container(_record_key(record), record.arch, record.num_classes, [])))
    progress(f"choosing bits and pruning per layer for {budget:,} bytes ({len(crops)} unlabelled views)")
    return choose_layers(model, x, budget, header, progress=progress)


def shared_layers(model, weights: str, opts: CompressOptions) -> list[sqz.SharedLayer]:
    """The model's convolutions pruned and shared as the options say (fixed bits; see budget_layers)."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    names = _conv_names(model)
    if opts.lossless:
        from ..deepcompression import decode_net
        from ..weights import read_weights_bytes, resolve

        path = Path(weights) if Path(weights).is_file() else resolve(weights)
        if path.suffix != ".net":
            raise ConvertError("--lossless needs a Deep Compression .net source")
        net = decode_net(read_weights_bytes(path))
        layers = []
        for l in net.layers:
            dense = np.zeros(int(np.prod(l.shape)), np.uint8)
            dense[l.positions()] = l.codes
            layers.append(sqz.SharedLayer(l.name, l.shape, l.codebook.copy(), l.bias.copy(), dense))
        return layers
    bits, sparsity = layer_spec(opts.bits or "8", 8), layer_spec(opts.sparsity, 0.0)
    layers = []
    for name in names:
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        mask = prune_mask(w, for_layer(sparsity, name), mask=w != 0)
        nbits = int(for_layer(bits, name))  # whole numbers 1..8 (check_inputs)
        layers.append(share_layer(name, w, b, nbits, mask))
    return layers


def _apply(model, layers):
    import torch

    model = __import__("copy").deepcopy(model)
    sd = model.state_dict()
    for l in layers:
        sd[f"{l.name}.weight"] = torch.from_numpy(l.weight())
        sd[f"{l.name}.bias"] = torch.from_numpy(l.bias)
    model.load_state_dict(sd)
    return model.eval()


def _top1(model, record, val, limit=None) -> float:
    from ..torch_eval import evaluate_torch

    return round(evaluate_torch(model, record, str(val), limit=limit, progress=False).top1, 3)


def _top1_by_half(model, compressed, record, val) -> dict:
    """Top-1 of both models on ``val``, whole and per half by class, with the paired 95% interval of the drop."""
    from edge_runtime.evaluation import HALVES, class_half
    from edge_runtime.intervals import paired_difference

    from ..torch_eval import evaluate_torch

    a = evaluate_torch(model, record, str(val), progress=False)
    b = evaluate_torch(compressed, record, str(val), progress=False)
    ok_a = np.array([t[0] == y for t, y in zip(a.top5_indices, a.targets)])
    ok_b = np.array([t[0] == y for t, y in zip(b.top5_indices, b.targets)])
    half = np.array([class_half(y) for y in a.targets])

    def figures(keep) -> dict:
        drop, lo, hi = paired_difference(list(ok_a[keep]), list(ok_b[keep]))
        return {"images": int(keep.sum()), "top1_float": round(100 * float(ok_a[keep].mean()), 3),
                "top1_compressed": round(100 * float(ok_b[keep].mean()), 3), "top1_drop": round(100 * drop, 3),
                "top1_drop_ci95": [round(100 * lo, 1), round(100 * hi, 1)]}

    out = figures(np.ones(len(half), bool))
    out["halves"] = {h: figures(half == h) for h in HALVES if (half == h).any()}
    return out


def sensitivity_table(model, record, val: Path, limit: int | None = 100, quiet: bool = False) -> list[dict]:
    """Top-1 after pruning one layer at a time to 50% of its surviving weights, and after sharing it at 4 bits."""
    base = _top1(model, record, val, limit)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    rows = []
    for name in _conv_names(model):
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        alive = float((w != 0).mean())
        pruned = share_layer(name, w, b, 8, prune_mask(w, 1 - alive / 2, mask=w != 0))
        four = share_layer(name, w, b, 4, w != 0)
        row = {"layer": name, "weights": int(w.size), "nonzero": int((w != 0).sum()),
               "top1_prune_half": _top1(_apply(model, [pruned]), record, val, limit) - base,
               "top1_4bit": _top1(_apply(model, [four]), record, val, limit) - base}
        rows.append(row)
        if not quiet:
            print(f"  {name:28} {row['nonzero']:8d} nz  prune 50%: {row['top1_prune_half']:+5.1f}  "
                  f"4-bit: {row['top1_4bit']:+5.1f}", file=sys.stderr, flush=True)
    return rows


def check_inputs(opts: CompressOptions) -> None:
    """Every flag a user can get wrong, checked before any work (and before the container is written).

    Raises:
        ConvertError: a folder that does not exist, an output that cannot be written, a bad spec.
    """
    for key, value in layer_spec(opts.bits, 8).items():
        if not (float(value).is_integer() and 1 <= value <= 8):
            where = "" if key == "*" else f" for {key}"
            raise ConvertError(f"--bits {value:g}{where}: a whole number of bits from 1 to 8 expected "
                               "(e.g. '8,features.12=7')")
    for key, value in layer_spec(opts.sparsity, 0.0).items():
        if not 0.0 <= value < 1.0:
            where = "" if key == "*" else f" for {key}"
            raise ConvertError(f"--sparsity {value:g}{where}: a fraction of zeros from 0 to below 1 expected "
                               "(e.g. 'features.12.expand3x3=0.8')")
    if opts.sensitivity and not opts.val:
        raise ConvertError("--sensitivity needs --val (labelled images)")
    if opts.size_budget < 1:
        raise ConvertError(f"--size-budget {opts.size_budget}: a positive number of bytes expected")
    if opts.finetune_steps < 0:
        raise ConvertError(f"--finetune-steps {opts.finetune_steps}: 0 (no fine-tuning) or more expected")
    if opts.lossless and opts.finetune_images:
        raise ConvertError("--finetune-images: not with --lossless (which keeps the release's codebooks as they are)")
    for flag, folder in (("--val", opts.val), ("--finetune-images", opts.finetune_images)):
        if folder is not None and not Path(folder).is_dir():
            raise ConvertError(f"{flag} {folder}: not a folder of images")
    check_output_path(opts.out, "--out")


def check_layer_names(opts: CompressOptions, model, arch: str) -> None:
    """Every layer --bits and --sparsity name is one of the model's convolutions or a module holding some.

    Raises:
        ConvertError: an unknown name (a typo would otherwise be ignored), listing the valid ones.
    """
    names = _conv_names(model)
    for flag, spec in (("--bits", opts.bits), ("--sparsity", opts.sparsity)):
        unknown = [k for k in layer_spec(spec, 0.0) if k != "*" and not any(covers(k, n) for n in names)]
        if unknown:
            raise ConvertError(f"{flag}: no layer {unknown[0]!r} in {arch}: one of {', '.join(names)} "
                               "(or a module holding some, e.g. features.12) expected")


def compress(opts: CompressOptions) -> dict:
    """Run the stage; writes the container atomically and returns the report."""
    from ..calibration import load_views
    from ..calibration_data import default_calib_dir, list_calibration_images
    from ..pixel_model import PixelModel
    from ..weights import load_model

    t0 = time.perf_counter()
    progress = (lambda m: None) if opts.quiet else (lambda m: print(f"[{time.perf_counter() - t0:6.1f}s] {m}",
                                                              file=sys.stderr, flush=True))
    check_inputs(opts)
    model, record = load_model(opts.weights)
    check_layer_names(opts, model, record.arch)
    key = _record_key(record)
    report: dict = {"weights": record.name, "sha256": record.sha256}
    if opts.sensitivity:
        progress("sensitivity analysis (one layer at a time)")
        report["sensitivity"] = sensitivity_table(model, record, opts.val, opts.limit, opts.quiet)
    if automatic(opts):
        layers, report["budget"] = budget_layers(model, record, opts.size_budget, progress)
    else:
        progress("pruning and weight sharing")
        layers = shared_layers(model, opts.weights, opts)
    finetune = not opts.lossless and opts.finetune_steps > 0
    if finetune:
        paths, _ = list_calibration_images(opts.finetune_images or default_calib_dir())
        crops, _ = load_views(paths, record.preprocessing, scales=(1.0, 1.15, 1.3, 1.6))
        progress(f"fine-tuning centroids by distillation on {len(crops)} views of {len(paths)} photos")
        from .finetune import finetune_centroids

        teacher = PixelModel(model, record.preprocessing)
        student = PixelModel(_apply(model, layers), record.preprocessing)
        layers = finetune_centroids(student, teacher, layers, crops, steps=opts.finetune_steps, progress=not opts.quiet)
    c = sqz.Container(record=key, arch=record.arch, num_classes=record.num_classes, layers=layers)
    data = sqz.encode(c)
    t = time.perf_counter()
    back = sqz.decode(data)
    decode_s = time.perf_counter() - t
    for a, b in zip(c.layers, back.layers):  # the container must give back exactly what was stored
        if not (np.array_equal(a.weight(), b.weight()) and np.array_equal(a.bias, b.bias)):
            raise ConvertError(f"internal error: {a.name} does not decode bit-exactly")
    out = Path(opts.out)
    if automatic(opts) and len(data) > opts.size_budget:  # the choice counts exact bytes: a bug if it misses
        raise ConvertError(f"internal error: {len(data):,} bytes written for a budget of {opts.size_budget:,}")
    atomic_write(out, data)
    nz = sum(int(np.count_nonzero(l.codes)) for l in layers)
    report.update({"out": str(out), "bytes": len(data), "decode_seconds": round(decode_s, 3),
                   "nonzero_weights": nz, "bits": {l.name: l.bits for l in layers},
                   "finetuned": finetune})
    if opts.val:
        progress("evaluating float and compressed models")
        compressed, _ = load_model(str(out))
        report.update(_top1_by_half(model, compressed, record, opts.val))
    progress(f"wrote {out} ({len(data):,} bytes)")
    return report
