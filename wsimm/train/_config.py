"""The resolved configuration of a training run (flags, ``--config run.yaml``, defaults)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from wsimm.errors import ConfigError

TASKS = ("grade", "survival")
FUSION_CHOICES = ("none", "graph", "late", "concat", "kronecker")


#: fusion_kwargs that only the graph fusion has
GRAPH_ONLY_KWARGS = ("coattention", "cross")
#: fusion_kwargs that add to the run's own network; its network baselines train without them
EXTRA_KWARGS = ("coattention", "contrastive", "cross")
#: fusion_kwargs of the run's own network at test time (uncertainty weighting): its network
#: baselines stay plain, and the same network's unweighted scores are reported beside it
TEST_TIME_KWARGS = ("uncertainty", "interval")
#: the settings of those switches, which go with them
EXTRA_SETTINGS = ("cross_slide_pcs", "cross_omics_pcs", "cross_prototypes", "temperature")

#: options that name files or folders (saved absolute in a run's config.yaml)
PATH_OPTIONS = ("store", "labels", "splits", "omics", "gene_groups", "clinical")


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool | np.bool_)


def _whole(v: Any) -> bool:  # numpy integers count; booleans do not
    return not _is_bool(v) and isinstance(v, numbers.Integral)


def _number(v: Any) -> bool:
    return not _is_bool(v) and isinstance(v, numbers.Real)


class _Kind(NamedTuple):
    """What a ``fusion_kwargs`` value must be: the words an error shows, and the test."""

    text: str
    test: Callable[[Any], bool]


_BOOL = _Kind("true or false", _is_bool)
_COUNT = _Kind("a whole number >= 1", lambda v: _whole(v) and v >= 1)
_FRACTION = _Kind("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
#: every fusion_kwargs key, with what it takes (checked before a run writes anything);
#: ``cross_prototypes`` and ``uncertainty`` are checked further where they are read
FUSION_KWARGS: dict[str, _Kind] = {
    "hidden": _COUNT,
    "layers": _COUNT,
    "heads": _COUNT,
    "kron_dim": _COUNT,
    "conv": _Kind("gatv2 or hgt", lambda v: v in ("gatv2", "hgt")),
    "dropout": _FRACTION,
    "modality_dropout": _FRACTION,
    "group_pcs": _Kind(
        "a whole number >= 0 (0: no principal components per gene-group kind)",
        lambda v: _whole(v) and v >= 0,
    ),
    "ensemble": _COUNT,
    "wide": _BOOL,
    "deep": _BOOL,
    "coattention": _BOOL,
    "cross": _BOOL,
    "cross_slide_pcs": _COUNT,
    "cross_omics_pcs": _COUNT,
    "cross_prototypes": _Kind(
        "0, a number of prototypes >= 2, none, or a list of those", lambda v: True
    ),
    "contrastive": _Kind("a number >= 0", lambda v: _number(v) and v >= 0),
    "temperature": _Kind("a number > 0", lambda v: _number(v) and v > 0),
    "uncertainty": _Kind("true, false or a number of Monte Carlo passes >= 2", lambda v: True),
    "interval": _Kind("a number in (0, 1)", lambda v: _number(v) and 0 < v < 1),
}


#: options of a run with what each must be (checked first: a YAML ``epochs: ten`` was an
#: "unexpected TypeError"); ranges that depend on other options are checked after
RUN_OPTION_KINDS: dict[str, _Kind] = {
    **{k: _COUNT for k in ("folds", "epochs", "batch_size", "n_bins", "graph_batch_size")},
    **{
        k: _Kind("a whole number >= 0", lambda v: _whole(v) and v >= 0)
        for k in ("patience", "restarts", "workers", "seed")
    },
    **{
        k: _Kind("a whole number >= 1, or unset", lambda v: v is None or _COUNT.test(v))
        for k in ("max_tiles", "threads")
    },
    "lr": _Kind("a number >= 0", lambda v: _number(v) and v >= 0),
    "weight_decay": _Kind("a number >= 0", lambda v: _number(v) and v >= 0),
    "val_fraction": _Kind("a number in (0, 0.5)", lambda v: _number(v) and 0 < v < 0.5),
    "normalize": _BOOL,
    "model_kwargs": _Kind("a mapping of option: value", lambda v: isinstance(v, dict)),
    "clinical_types": _Kind(
        "a mapping of column: numeric|categorical", lambda v: isinstance(v, dict)
    ),
}


def yaml_load(text: str) -> Any:
    """YAML as a config file means it: ``1e-3`` is a number. PyYAML follows YAML 1.1, where a
    float needs a dot (``1.0e-3``), and read ``lr: 1e-3`` as the text "1e-3": every fold of
    such a run failed comparing a number with a string."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass


@functools.cache
def _yaml_loader():
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def check_fusion_kwargs(kw: dict[str, Any]) -> None:
    """Refuse an unknown ``fusion_kwargs`` key or a value of the wrong kind, naming the key
    and what it takes (a typo would otherwise fail every fold, or be silently ignored)."""
    if not isinstance(kw, dict):
        raise ConfigError(f"fusion_kwargs must be a mapping of option: value, got {kw!r}")
    unknown = sorted(set(kw) - set(FUSION_KWARGS))
    if unknown:
        raise ConfigError(
            f"fusion_kwargs: unknown keys {', '.join(map(str, unknown))}; valid keys: "
            f"{', '.join(sorted(FUSION_KWARGS))} (docs/stages/fusion.md)"
        )
    for key, value in kw.items():
        kind = FUSION_KWARGS[key]
        if not kind.test(value):
            raise ConfigError(f"fusion_kwargs {key} must be {kind.text}, got {value!r}")
    hidden, heads = kw.get("hidden", 64), kw.get("heads", 4)
    if hidden % heads:
        raise ConfigError(f"fusion_kwargs hidden ({hidden}) must be a multiple of heads ({heads})")


@dataclass
class TrainConfig:
    """Everything that defines a run; written to ``config.yaml`` in the run directory.

    Outcome columns follow one convention: ``event = 1`` means the event was observed. Tables
    that store censorship instead (1 = censored) set ``censorship_col`` and leave
    ``event_col`` alone.
    """

    store: str | None = None
    labels: str | None = None
    task: str = "grade"
    out: str = "run"
    label_col: str = "grade"
    #: the grade classes in order (text labels such as low, mid, high have none to read)
    grade_order: list | None = None
    time_col: str = "time"
    event_col: str = "event"
    censorship_col: str | None = None
    patient_col: str = "patient_id"
    slide_col: str = "slide_id"
    model: str = "abmil"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    folds: int = 5
    splits: str | None = None
    val_fraction: float = 0.2
    epochs: int = 40
    patience: int = 10
    restarts: int = 2  # MIL runs kept at their first epoch (a flat start) start again
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    max_tiles: int | None = 8192
    balance: str = "weights"
    multi_slide: str = "tiles"
    survival_loss: str = "nll"
    n_bins: int = 4
    normalize: bool = True
    cache: str = "auto"
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    # fusion (wsimm.fusion): omics / clinical tables, and how modalities are joined
    omics: str | None = None
    gene_groups: str | None = None
    clinical: str | None = None
    clinical_cols: list[str] | None = None
    clinical_types: dict[str, str] = field(default_factory=dict)
    fusion: str = "none"
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    graph_batch_size: int = 64
    baselines: str = "auto"
    # hyper-parameters by inner cross-validation on each outer fold's training patients
    # (wsimm.train._tune): None = off, {} = the default grid, or {"grid": ..., "folds": ...}
    tune: dict[str, Any] | None = None
    #: the ``--config`` file the settings came from (not saved; errors name it)
    source: ClassVar[str | None] = None

    def validate(self) -> TrainConfig:
        for key, kind in RUN_OPTION_KINDS.items():
            if not kind.test(getattr(self, key)):
                raise self.error(f"{key} must be {kind.text}, got {getattr(self, key)!r}")
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.fusion not in FUSION_CHOICES:
            raise ConfigError(
                f"--fusion must be one of {', '.join(FUSION_CHOICES)}, got {self.fusion!r}"
            )
        if self.fusion == "none" and (self.omics or self.clinical):
            raise ConfigError(
                "--omics/--clinical are used by fusion models: pass --fusion graph (or late, "
                "concat, kronecker)"
            )
        if self.gene_groups and not self.omics:  # it would be read by nothing
            raise ConfigError(
                "--gene-groups groups the genes of --omics: pass --omics too (with --fusion), "
                "or leave --gene-groups out"
            )
        if self.store is None and self.fusion == "none":
            raise ConfigError("wsimm train needs --store (the feature store with the bags)")
        if self.fusion != "none" and not (self.store or self.omics or self.clinical):
            raise ConfigError("--fusion needs at least one of --store, --omics, --clinical")
        if self.labels is None:
            raise ConfigError("wsimm train needs --labels (a table of patients and outcomes)")
        if self.splits is None and self.folds < 2:
            raise ConfigError(f"--folds must be >= 2, got {self.folds}")
        for name, value, allowed in (
            ("balance", self.balance, ("weights", "sampler", "none")),
            ("multi_slide", self.multi_slide, ("tiles", "slides")),
            ("survival_loss", self.survival_loss, ("nll", "cox")),
            ("cache", str(self.cache).lower(), ("auto", "true", "false")),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for key in ("clinical_cols", "grade_order"):  # a flag's "a,b,c" is a list
            if isinstance(getattr(self, key), str):
                setattr(self, key, [c.strip() for c in getattr(self, key).split(",") if c.strip()])
        if self.grade_order is not None and (
            not isinstance(self.grade_order, list)
            or len({str(c) for c in self.grade_order}) != len(self.grade_order)
            or len(self.grade_order) < 2
        ):
            raise self.error(
                "grade_order must list two or more distinct grade classes, lowest first "
                f"(--grade-order low,mid,high), got {self.grade_order!r}"
            )
        if self.fusion_kwargs:  # refused before any fold trains
            from wsimm.train._uncertainty import UncertaintySpec

            if self.fusion == "none":
                raise self.error(
                    "fusion_kwargs is used by fusion models only: pass --fusion graph (or "
                    "late, concat, kronecker), or remove it (model_kwargs sets the MIL model)"
                )
            with self.naming_source():
                check_fusion_kwargs(self.fusion_kwargs)
                UncertaintySpec.pop_from(dict(self.fusion_kwargs))
        if self.tune is True:
            self.tune = {}
        elif self.tune is False:
            self.tune = None
        elif self.tune is not None and not isinstance(self.tune, dict):
            raise ConfigError(f"tune must be true, false or a mapping, got {self.tune!r}")
        if self.fusion != "none":
            self._refuse_slide_only_options()
        graph_only = sorted(k for k in GRAPH_ONLY_KWARGS if self.fusion_kwargs.get(k))
        if not self.fusion_kwargs.get("deep", True):  # the wide part alone: graph fusion's
            graph_only.append("deep: false")
        if graph_only and self.fusion != "graph":
            raise self.error(
                f"fusion_kwargs {', '.join(graph_only)} need --fusion graph (got --fusion "
                f"{self.fusion}); remove them or use the graph fusion"
            )
        return self

    def error(self, message: str) -> ConfigError:
        """A ConfigError about a setting that came from ``--config``: it names the file."""
        source = getattr(self, "source", None)
        return ConfigError(f"{source}: {message}" if source else message)

    @contextlib.contextmanager
    def naming_source(self) -> Iterator[None]:
        """ConfigErrors raised inside are about settings of ``--config``: re-raised naming
        the file (:meth:`error`)."""
        try:
            yield
        except ConfigError as e:
            raise self.error(str(e)) from None

    def _refuse_slide_only_options(self) -> None:
        """Options that slide-only training honours and fusion runs do not: refused, so no
        setting is silently ignored."""
        default = TrainConfig()
        refused = {
            "batch_size": "--batch-size (fusion runs batch patients' graphs: set "
            "graph_batch_size in --config)",
            "multi_slide": "--multi-slide (fusion runs give each slide its own node)",
            "workers": "workers (fusion runs read tiles in the training process)",
        }
        for name, what in refused.items():
            if getattr(self, name) != getattr(default, name):
                raise ConfigError(f"{what} is not used with --fusion {self.fusion}; remove it")
        if self.balance == "sampler":
            raise ConfigError(
                f"balance: sampler is not used with --fusion {self.fusion}; use weights "
                "(class-weighted loss) or none"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown keys {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(names))}"
            )
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Read a YAML config; ``overrides`` (flags the user gave) win over the file."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            d = yaml_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: expected a mapping of option: value")
        d = {k.replace("-", "_"): v for k, v in d.items()}
        if overrides.get("tune") is True and isinstance(d.get("tune"), dict):
            overrides = {k: v for k, v in overrides.items() if k != "tune"}  # --tune + a block
        d.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls.from_dict(d, source=str(p))
        cfg.source = str(p)  # not a field: errors about its settings name the file
        return cfg

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config; file options as absolute paths, so ``wsimm heatmap`` / ``predict``
        / ``view`` find the run's tables from any directory (relative to the directory the
        run was started in, they were not found elsewhere, and a heatmap could not tell which
        fold held a slide out)."""
        import yaml

        d = self.to_dict()
        for key in PATH_OPTIONS:
            value = d.get(key)
            if value and "://" not in str(value):
                d[key] = str(Path(str(value)).expanduser().resolve())
        Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
