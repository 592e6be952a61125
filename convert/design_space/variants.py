"""The variants of a design-space sweep: the paper's metaparameters and macro-architectures.

A :class:`Variant` is one point of SqueezeNet's design space (Iandola et al. 2016, Section 5-6): the
squeeze ratio ``sr``, the share of 3x3 expand filters ``pct_3x3``, the expand widths ``base_e`` /
``incr_e`` / ``freq``, the bypass (``none``, ``simple``, ``complex``) and the stem (``1_0`` or ``1_1``).
It is built by the model registry (``convert/models``): a registered name where one matches exactly
(``squeezenet1_0``, ``squeezenet1_1``, the bypass variants), else ``squeezenet_custom`` with its
metaparameters, so the checkpoint and the artifact record the plainest description.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields

from edge_runtime.preprocess import MAX_INPUT_SIDE

from ..errors import ConvertError
from ..models import MAX_PARAMETERS, MetaParameters, ModelArgumentError, check_model, input_too_small


class DesignSpaceError(ConvertError):
    """A bad sweep definition, output folder, results file or device results file."""


_META = MetaParameters()  # the paper's defaults: SqueezeNet v1.0's fire widths
_META_KEYS = ("base_e", "incr_e", "pct_3x3", "freq", "sr")
BYPASSES = ("none", "simple", "complex")
VERSIONS = ("1_0", "1_1")
# The widest fire module's expand filters: 4x v1.0's 512. Room for any sweep, not for a model that cannot be
# built: at most 330 M parameters (1.3 GB, every fire 2048 wide at SR 1, pct_3x3 1); base_e 99999 overflowed.
MAX_EXPAND = 2048


def _within(value: object, low: float, high: float) -> bool:
    """A number (not a bool, not NaN) from low to high."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class Variant:
    """One point of the design space; the defaults are SqueezeNet v1.0."""

    sr: float = _META.sr
    pct_3x3: float = _META.pct_3x3
    bypass: str = "none"
    version: str = "1_0"
    base_e: int = _META.base_e
    incr_e: int = _META.incr_e
    freq: int = _META.freq

    def __post_init__(self) -> None:
        if self.bypass not in BYPASSES:
            raise DesignSpaceError(f"bypass {self.bypass!r}: one of {', '.join(BYPASSES)} expected")
        if self.version not in VERSIONS:
            raise DesignSpaceError(f"version {self.version!r}: one of {', '.join(VERSIONS)} expected")
        # The metaparameters' natural ranges (Section 5): a squeeze layer at most as wide as the expand
        # layers it feeds (the paper's SR 0.125..1), a share of 3x3 filters, and a width step every 1 to 8
        # fire modules (there are 8).
        n = _META.num_fire
        for key, low, high, expected in (("sr", 1e-9, 1, "0 < sr <= 1 (at most as wide as the expand layers)"),
                                         ("pct_3x3", 0, 1, "0..1 (a share of the expand filters)"),
                                         ("base_e", 1, MAX_EXPAND, f"1..{MAX_EXPAND} (integer)"),
                                         ("incr_e", 0, MAX_EXPAND, f"0..{MAX_EXPAND} (integer)"),
                                         ("freq", 1, n, f"1..{n} (fire modules per width step)")):
            value = getattr(self, key)
            if not _within(value, low, high) or key in ("base_e", "incr_e", "freq") and not isinstance(value, int):
                raise DesignSpaceError(f"{key} {value!r}: {expected} expected")
        widest = self.base_e + self.incr_e * ((n - 1) // self.freq)
        if widest > MAX_EXPAND:
            raise DesignSpaceError(f"base_e {self.base_e} + incr_e {self.incr_e} x {(n - 1) // self.freq} = {widest} "
                                   f"expand filters in the widest fire module: at most {MAX_EXPAND} expected")
        try:
            self.meta().fire_widths()
        except ValueError as e:
            raise DesignSpaceError(str(e)) from None
        arch, kwargs = self.arch()
        try:  # the bound of every model the tools build, at ImageNet's 1000 classes (a data set has at most that)
            check_model(arch, num_classes=1000, **kwargs)
        except ModelArgumentError as e:
            raise DesignSpaceError(f"{self.name}: {e} (the tools' bound on any model, {MAX_PARAMETERS:,})") from None

    def meta(self) -> MetaParameters:
        return MetaParameters(base_e=self.base_e, incr_e=self.incr_e, pct_3x3=self.pct_3x3, freq=self.freq,
                              sr=self.sr)

    @property
    def name(self) -> str:
        """A short, file-safe name listing what differs from v1.0 ("v1.0", "sr0.5", "v1.1_simple-bypass")."""
        parts = ["v1.1"] if self.version == "1_1" else []
        if self.sr != _META.sr:
            parts.append(f"sr{self.sr:g}")
        if self.pct_3x3 != _META.pct_3x3:
            parts.append(f"pct3x3-{self.pct_3x3:g}")
        if (self.base_e, self.incr_e, self.freq) != (_META.base_e, _META.incr_e, _META.freq):
            parts.append(f"e{self.base_e}+{self.incr_e}f{self.freq}")
        if self.bypass != "none":
            parts.append(f"{self.bypass}-bypass")
        return "_".join(parts) or "v1.0"

    @property
    def paper_default(self) -> str | None:
        """"v1.0" or "v1.1" when this is one of the paper's released models, else None."""
        if self == Variant():
            return "v1.0"
        if self == Variant(version="1_1"):
            return "v1.1"
        return None

    def arch(self) -> tuple[str, dict]:
        """(registered model name, builder keyword arguments) that build this variant."""
        stem = "squeezenet1_0" if self.version == "1_0" else "squeezenet1_1"
        if self.meta() == _META:
            if self.bypass == "none":
                return stem, {}
            if (self.version, self.bypass) in (("1_0", "simple"), ("1_0", "complex"), ("1_1", "simple")):
                return f"{stem}_{self.bypass}_bypass", {}
        kwargs: dict = {k: getattr(self, k) for k in _META_KEYS if getattr(self, k) != getattr(_META, k)}
        if self.version != "1_0":
            kwargs["version"] = self.version
        if self.bypass != "none":
            kwargs["bypass"] = self.bypass
        return "squeezenet_custom", kwargs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Variant":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The paper's sweeps (Section 5.1: SR from 0.125 to 1.0 with pct_3x3 = 0.5; Section 5.2: pct_3x3 from 1% to 99%
# with SR = 0.5; Section 6: no, simple and complex bypass on v1.0), all with base_e = incr_e = 128, freq = 2.
PAPER_SR = (0.125, 0.25, 0.5, 0.75, 1.0)
PAPER_PCT_3X3 = (0.01, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.99)


def _unique(variants) -> list[Variant]:
    seen: dict[Variant, None] = {}
    for v in variants:
        seen.setdefault(v, None)
    return list(seen)


SWEEPS: dict[str, list[Variant]] = {
    "sr": [Variant(sr=s) for s in PAPER_SR],
    "pct3x3": [Variant(sr=0.5, pct_3x3=p) for p in PAPER_PCT_3X3],
    "bypass": [Variant(bypass=b) for b in BYPASSES],
}
SWEEPS["all"] = _unique([*SWEEPS["sr"], *SWEEPS["pct3x3"], *SWEEPS["bypass"], Variant(version="1_1")])
# The documented reduced sweep (README): 9 variants sharing v1.0 as the base of every micro sweep, so it
# finishes on a 2-core machine (pct_3x3 varies around SR 0.125, not the paper's 0.5, which triples the MACs).
SWEEPS["reduced"] = [Variant(), Variant(version="1_1"), Variant(sr=0.25), Variant(sr=0.5), Variant(sr=1.0),
                     Variant(pct_3x3=0.125), Variant(pct_3x3=0.875), Variant(bypass="simple"),
                     Variant(bypass="complex")]

_GRID_KEYS = {"sr": float, "pct_3x3": float, "bypass": str, "version": str, "base_e": int, "incr_e": int,
              "freq": int}


def parse_grid(text: str) -> list[Variant]:
    """The cartesian product of ``"key=v1,v2;key=v1,..."`` (keys: sr, pct_3x3, bypass, version, base_e,
    incr_e, freq; unnamed keys keep v1.0's values).

    Raises:
        DesignSpaceError: unknown key, unparsable value, or a value outside the design space.
    """
    axes: dict[str, list] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, values = part.partition("=")
        key = key.strip().replace("pct3x3", "pct_3x3")
        if not sep or key not in _GRID_KEYS:
            raise DesignSpaceError(f"--grid {part!r}: KEY=V1,V2 with KEY one of {', '.join(_GRID_KEYS)} expected")
        if key in axes:
            raise DesignSpaceError(f"--grid: {key} given twice")
        try:
            axes[key] = [_GRID_KEYS[key](v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise DesignSpaceError(f"--grid {part!r}: {_GRID_KEYS[key].__name__} values expected") from None
        if not axes[key]:
            raise DesignSpaceError(f"--grid {part!r}: no values")
    if not axes:
        raise DesignSpaceError(f"--grid {text!r}: at least one KEY=V1,V2 expected (e.g. \"sr=0.25,0.5;pct_3x3=0.5\")")
    keys = list(axes)
    try:
        return _unique(Variant(**dict(zip(keys, combo))) for combo in itertools.product(*axes.values()))
    except DesignSpaceError as e:
        raise DesignSpaceError(f"--grid {text!r}: {e}") from None


def check_input_size(variants: list[Variant], size: int) -> None:
    """Every variant maps a ``size`` x ``size`` input to an output, and the size is one a preprocessing
    record accepts (--input-size 7 was a RuntimeError in the MAC count, 99999 an allocation of 119 GB).

    Raises:
        DesignSpaceError: naming the first variant the size does not fit.
    """
    if size > MAX_INPUT_SIDE:
        raise DesignSpaceError(f"--input-size {size}: at most {MAX_INPUT_SIDE} expected")
    for v in variants:
        problem = input_too_small(v.version, size, f" for {v.name}")
        if problem:
            raise DesignSpaceError(f"--input-size {size}: {problem}")


def select(sweep: str | None = None, grid: str | None = None) -> list[Variant]:
    """The variants of a named sweep or a grid (one of the two)."""
    if grid:
        return parse_grid(grid)
    name = sweep or "reduced"
    if name not in SWEEPS:
        raise DesignSpaceError(f"--sweep {name}: one of {', '.join(SWEEPS)} expected")
    return list(SWEEPS[name])

