"""Read and validate a study file (TOML) into frozen dataclasses."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from bayeslmm.errors import BayeslmmError, StudyError
from bayeslmm.model.formula import Formula, parse
from bayeslmm.model.options import Family, check_nagq
from bayeslmm.model.priors import Priors

Lme4Method = Literal["reml", "ml"]
_TOP_KEYS = {"name", "title", "description", "data", "prepare", "model", "comparison"}
_MODEL_KEYS = {"name", "formula", "question", "lme4_method", "prior", "family", "nagq"}
_COMPARISON_KEYS = {"name", "models", "question", "logo"}


@dataclass(frozen=True)
class ModelSpec:
    """A named model of a study.

    ``nagq`` is glmer's ``nAGQ`` for lme4's side of a binomial or Poisson mixed model: 1, the
    Laplace approximation (the default), or the nodes of adaptive Gauss-Hermite quadrature
    (:func:`~bayeslmm.model.options.check_nagq`). The posterior does not depend on it.
    """

    name: str
    formula: Formula
    question: str = ""
    lme4_method: Lme4Method = "reml"
    priors: Priors = field(default_factory=Priors)
    nagq: int = 1


@dataclass(frozen=True)
class Comparison:
    """A comparison between two or more models of the study.

    ``logo`` names a grouping factor for leave-one-group-out cross-validation beside LOO (``""``: none).
    """

    name: str
    models: tuple[str, ...]
    question: str = ""
    logo: str = ""


@dataclass(frozen=True)
class Study:
    """A study: where the data comes from, how to prepare it, which models to fit and compare."""

    name: str
    title: str
    description: str
    source: str
    data_object: str | None
    scale: dict[str, str] = field(default_factory=dict)
    nest: dict[str, tuple[str, ...]] = field(default_factory=dict)
    models: tuple[ModelSpec, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    path: Path | None = None

    def model(self, name: str) -> ModelSpec:
        """The model called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise StudyError(f"study {self.name!r} has no model {name!r}")


def check_logo(group: str, models, flag: str = "logo") -> None:
    """Refuse a leave-one-group-out factor that none of ``models`` (ModelSpecs) has as a grouping factor."""
    from bayeslmm.errors import OptionsError

    have = list(dict.fromkeys(g for m in models for g in m.formula.grouping_factors))
    if group not in have:
        raise OptionsError(f"{flag} {group!r} is not a grouping factor of the compared models; theirs: "
                           f"{', '.join(have) or 'none (no random terms)'}")


def _line_of(text: str, needle: str) -> str:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return f":{i}"
    return ""


def load(path: str | Path) -> Study:
    """Read a study file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Study

    Raises
    ------
    StudyError
        Naming the file, the bad key and (where it can be found) its line.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} does not exist; see models/dragons.toml for an example")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from exc
    return from_dict(raw, path, text)


def _expect(value, kind, where: str, ctx: str):
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StudyError(f"{where}: {ctx} must be a {name}, not {type(value).__name__}")
    return value


def from_dict(raw: dict, path: Path | None = None, text: str = "") -> Study:
    """Validate a parsed study dictionary (see :func:`load`)."""
    where = str(path) if path else "study"
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise StudyError(
            f"{where}{_line_of(text, key)}: unknown key {key!r}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = _expect(raw.get("name", path.stem if path else "study"), str, where, "'name'")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise StudyError(f"{where}: 'name' {name!r} may hold only letters, digits, '.', '_' and '-'")
    data = _expect(raw.get("data", {}), dict, where, "[data]")
    source = _expect(data.get("source", "builtin:dragons"), str, where, "data.source")
    if source != "builtin:dragons" and path is not None and not Path(source).is_absolute():
        source = str((path.parent / source).resolve()) if (path.parent / source).exists() else source
    obj = data.get("object")
    prep = _expect(raw.get("prepare", {}), dict, where, "[prepare]")
    bad = set(prep) - {"scale", "nest"}
    if bad:
        key = sorted(bad)[0]
        raise StudyError(f"{where}{_line_of(text, key)}: unknown key prepare.{key}; use 'scale' or 'nest'")
    scale = {str(k): _expect(v, str, where, f"prepare.scale.{k}") for k, v in prep.get("scale", {}).items()}
    nest = {}
    for k, v in _expect(prep.get("nest", {}), dict, where, "prepare.nest").items():
        _expect(v, list, where, f"prepare.nest.{k}")
        if len(v) < 2:
            raise StudyError(f"{where}: prepare.nest.{k} needs at least two columns, e.g. ['mountainRange', 'site']")
        nest[str(k)] = tuple(map(str, v))
    models = []
    for i, m in enumerate(_expect(raw.get("model", []), list, where, "[[model]]")):
        _expect(m, dict, where, f"model #{i + 1}")
        bad = set(m) - _MODEL_KEYS
        if bad:
            key = sorted(bad)[0]
            allowed = ", ".join(sorted(_MODEL_KEYS))
            raise StudyError(f"{where}{_line_of(text, key)}: unknown key {key!r} in model #{i + 1}; allowed: {allowed}")
        for key in ("name", "formula"):
            if key not in m:
                raise StudyError(f"{where}: model #{i + 1} has no '{key}'")
        mname = _expect(m["name"], str, where, f"model #{i + 1} name")
        ftext = _expect(m["formula"], str, where, f"model {mname!r} formula")
        family = m.get("family", "gaussian")
        if family not in get_args(Family):
            raise StudyError(f"{where}{_line_of(text, 'family')}: model {mname!r}: family must be "
                             f"{', '.join(get_args(Family))}, not {family!r}")
        try:
            formula = parse(ftext, family)
        except BayeslmmError as exc:
            raise StudyError(f"{where}{_line_of(text, ftext)}: model {mname!r}: {exc}") from exc
        method = m.get("lme4_method", "reml")
        if method not in get_args(Lme4Method):
            raise StudyError(f"{where}{_line_of(text, 'lme4_method')}: model {mname!r}: "
                             f"lme4_method must be 'reml' or 'ml', not {method!r}")
        texts = m.get("prior", [])
        texts = [texts] if isinstance(texts, str) else _expect(texts, list, where, f"model {mname!r} prior")
        try:
            priors = Priors.from_texts(texts)
            priors.check_groups(formula.grouping_factors, tuple(r.group for r in formula.random if r.may_correlate))
        except BayeslmmError as exc:
            raise StudyError(f"{where}{_line_of(text, 'prior')}: model {mname!r}: {exc}") from exc
        nagq = 1
        if "nagq" in m:
            try:
                nagq = check_nagq(m["nagq"], formula)
            except BayeslmmError as exc:
                raise StudyError(f"{where}{_line_of(text, 'nagq')}: model {mname!r}: {exc}") from exc
        models.append(ModelSpec(mname, formula, str(m.get("question", "")), method, priors, nagq))
    if not models:
        raise StudyError(f"{where}: no [[model]] entries; add at least one with name and formula")
    names = [m.name for m in models]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StudyError(f"{where}: model name {sorted(dup)[0]!r} is used twice; names must be unique")
    comparisons = []
    for i, c in enumerate(_expect(raw.get("comparison", []), list, where, "[[comparison]]")):
        _expect(c, dict, where, f"comparison #{i + 1}")
        bad = set(c) - _COMPARISON_KEYS
        if bad:
            raise StudyError(f"{where}: unknown key {sorted(bad)[0]!r} in comparison #{i + 1}")
        ms = _expect(c.get("models", []), list, where, f"comparison #{i + 1} models")
        if len(ms) < 2:
            raise StudyError(f"{where}: comparison #{i + 1} needs at least two models")
        for mn in ms:
            if mn not in names:
                raise StudyError(f"{where}{_line_of(text, mn)}: comparison #{i + 1} names unknown model {mn!r}; "
                                 f"models are: {', '.join(names)}")
        logo = _expect(c.get("logo", ""), str, where, f"comparison #{i + 1} logo")
        if logo:
            try:
                check_logo(logo, [m for m in models if m.name in ms])
            except BayeslmmError as exc:
                raise StudyError(f"{where}{_line_of(text, 'logo')}: comparison #{i + 1}: {exc}") from exc
        comparisons.append(Comparison(str(c.get("name", f"comparison {i + 1}")), tuple(ms), str(c.get("question", "")),
                                      logo))
    return Study(
        name=name,
        title=str(raw.get("title", name)),
        description=str(raw.get("description", "")).strip(),
        source=source,
        data_object=obj,
        scale=scale,
        nest=nest,
        models=tuple(models),
        comparisons=tuple(comparisons),
        path=path,
    )
