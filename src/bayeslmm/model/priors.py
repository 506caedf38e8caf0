"""Priors the user sets, in brms's vocabulary: ``b ~ Normal(0, 10)``, ``sd(site) ~ HalfNormal(5)``.

A statement names a class of parameters (brms's ``class``), optionally what within it, and a
distribution PyMC knows, with its arguments by position (PyMC's order) or by name:

============================  ==============================================================
``b ~ Normal(0, 10)``         every fixed-effect slope; ``b(bodyLength2) ~ ...`` one of them
                              (lme4's column name) or a whole factor term (``b(season)``)
``Intercept ~ Normal(50, 20)``  the intercept, on centred predictors (as brms and Bambi put it)
``sd ~ HalfNormal(10)``        every group-level sd; ``sd(site)`` one grouping factor's;
                              ``sd(site, bodyLength2)`` one coefficient's (lme4's name)
``sigma ~ HalfStudentT(4, 10)``  the residual sd (Gaussian models)
``cor ~ LKJ(2)``               each correlated block's correlations; ``cor(subject)`` one group's
``shape ~ Exponential(0.1)``   the negative binomial's theta (brms's ``shape``, Bambi's ``alpha``)
============================  ==============================================================

A more specific statement wins over a general one (``sd(site)`` over ``sd``), and a later one over
an earlier one of the same reach. Whatever no statement sets keeps Bambi's default prior for the
formula and data (:mod:`bayeslmm.model.prior_model`); correlations default to LKJ(1), uniform over
correlation matrices, as brms and rstanarm's ``decov``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bayeslmm.errors import OptionsError
from bayeslmm.numbers import format_number

#: Each distribution's arguments in PyMC's positional order, and those that must be positive.
DISTRIBUTIONS = {
    "Normal": (("mu", "sigma"), ("sigma",)),
    "StudentT": (("nu", "mu", "sigma"), ("nu", "sigma")),
    "Cauchy": (("alpha", "beta"), ("beta",)),
    "HalfNormal": (("sigma",), ("sigma",)),
    "HalfStudentT": (("nu", "sigma"), ("nu", "sigma")),
    "HalfCauchy": (("beta",), ("beta",)),
    "Exponential": (("lam",), ("lam",)),
    "Gamma": (("alpha", "beta"), ("alpha", "beta")),
    "InverseGamma": (("alpha", "beta"), ("alpha", "beta")),
    "LKJ": (("eta",), ("eta",)),
}
LOCATION = ("Normal", "StudentT", "Cauchy")
SCALE = ("HalfNormal", "HalfStudentT", "HalfCauchy", "Exponential", "Gamma", "InverseGamma")
#: Classes of parameters whose prior can be set, with the distributions each accepts.
SETTABLE = {"b": LOCATION, "Intercept": LOCATION, "sd": SCALE, "sigma": SCALE, "cor": ("LKJ",), "shape": SCALE}
#: What each class names in parentheses.
WITHIN = {"b": "a fixed effect: b(bodyLength2)", "Intercept": None, "sd": "a group, and optionally a coefficient: "
          "sd(site) or sd(site, bodyLength2)", "sigma": None, "cor": "a group: cor(subject)", "shape": None}
#: LKJ's shape when no statement sets it (uniform over correlation matrices).
DEFAULT_ETA = 1.0

_STATEMENT = re.compile(r"^\s*(?P<cls>[A-Za-z_]\w*)\s*(?:\((?P<within>[^~]*)\))?\s*~\s*"
                        r"(?P<dist>[A-Za-z_]\w*)\s*\((?P<args>[^()]*)\)\s*$")


@dataclass(frozen=True)
class PriorStatement:
    """One prior: ``cls(group, coef) ~ dist(args)``; ``group``/``coef`` are ``""`` when not given.

    For ``b`` the parenthesised name is the coefficient (``coef``); for ``sd`` and ``cor`` the group.
    """

    cls: str
    group: str
    dist: str
    args: tuple[tuple[str, float], ...]
    coef: str = ""

    @property
    def value(self) -> float:
        """The first argument (LKJ's eta)."""
        return self.args[0][1]

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.args)

    @property
    def reach(self) -> int:
        """How specific the statement is: 0 the whole class, 1 a group, 2 a coefficient."""
        return 2 if self.coef else 1 if self.group else 0

    @property
    def text(self) -> str:
        """The statement as bayeslmm writes it (``sd(site) ~ HalfNormal(sigma = 5)``)."""
        inner = ", ".join(x for x in (self.group, self.coef) if x)
        where = f"({inner})" if inner else ""
        args = ", ".join(f"{k} = {format_number(v)}" for k, v in self.args)
        return f"{self.cls}{where} ~ {self.dist}({args})"


def parse_prior(text: str) -> PriorStatement:
    """Read one statement; a one-line :class:`OptionsError` names what is wrong and what exists."""
    m = _STATEMENT.match(str(text))
    if m is None:
        raise OptionsError(f"cannot read the prior {text!r}: write it as 'class ~ Distribution(arguments)', e.g. "
                           "'sd(site) ~ HalfNormal(10)' or 'b ~ Normal(0, 5)'")
    cls, dist = m["cls"], m["dist"]
    within = [w.strip() for w in (m["within"] or "").split(",")] if m["within"] is not None else []
    if cls not in SETTABLE:
        raise OptionsError(f"prior {text!r}: class {cls!r} is not one bayeslmm knows; the classes are "
                           f"{', '.join(SETTABLE)}")
    if dist not in SETTABLE[cls]:
        raise OptionsError(f"prior {text!r}: {cls} takes {', '.join(SETTABLE[cls])}, not {dist}")
    if within and (WITHIN[cls] is None or not all(within) or len(within) > (2 if cls == "sd" else 1)):
        what = f"names {WITHIN[cls]}" if WITHIN[cls] else "takes nothing in parentheses"
        raise OptionsError(f"prior {text!r}: {cls} {what}")
    group, coef = "", ""
    if cls == "b":
        coef = within[0] if within else ""
    elif within:
        group, coef = within[0], (within[1] if len(within) > 1 else "")
    return PriorStatement(cls, group, dist, _arguments(text, dist, m["args"]), coef)


def _arguments(text: str, dist: str, args_text: str) -> tuple[tuple[str, float], ...]:
    """A distribution's arguments by name, in PyMC's order; each a finite number, scales positive."""
    names, positive = DISTRIBUTIONS[dist]
    usage = f"{dist}({', '.join(names)})"
    given = [a.strip() for a in args_text.split(",") if a.strip()]
    values: dict[str, float] = {}
    for i, arg in enumerate(given):
        key, _, raw = arg.rpartition("=")
        key = key.strip() or (names[i] if i < len(names) else "")
        if key not in names:
            raise OptionsError(f"prior {text!r}: {usage} has no argument {key or arg!r}")
        if key in values:
            raise OptionsError(f"prior {text!r}: argument {key} given twice")
        try:
            values[key] = float(raw)
        except ValueError:
            raise OptionsError(f"prior {text!r}: {key} must be a number, not {raw.strip()!r}") from None
        if not abs(values[key]) < float("inf") or (key in positive and not values[key] > 0):
            raise OptionsError(f"prior {text!r}: {key} must be a {'positive' if key in positive else 'finite'} "
                               "number")
    missing = [k for k in names if k not in values]
    if missing:
        raise OptionsError(f"prior {text!r}: {usage} needs {', '.join(missing)}")
    return tuple((k, values[k]) for k in names)


@dataclass(frozen=True)
class Priors:
    """The priors a user set for one model (none: Bambi's defaults and LKJ(1))."""

    statements: tuple[PriorStatement, ...] = ()

    @classmethod
    def from_texts(cls, texts) -> Priors:
        """From statements as text (the study file's ``prior`` list, ``--prior`` flags)."""
        if isinstance(texts, str):
            texts = [texts]
        return cls(tuple(parse_prior(t) for t in texts or ()))

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.statements)

    def check_groups(self, groups: tuple[str, ...], correlated: tuple[str, ...]) -> None:
        """Refuse a statement for a group the formula does not have or that has no correlated block."""
        for s in self.statements:
            if s.group and s.group not in groups:
                raise OptionsError(f"prior {s.text!r}: the formula has no grouping factor {s.group!r}; "
                                   f"its grouping factors are {', '.join(groups) or 'none'}")
            if s.group and s.cls == "cor" and s.group not in correlated:
                raise OptionsError(f"prior {s.text!r}: {s.group} has no correlated random effects; "
                                   "a cor prior needs a term like (1 + x|group)")
            if s.cls == "cor" and not correlated:
                raise OptionsError(f"prior {s.text!r}: the formula has no correlated random effects; "
                                   "a cor prior needs a term like (1 + x|group)")

    def chosen(self, cls: str, group: str = "", coef: str = "", term: str = "") -> PriorStatement | None:
        """The statement that sets one parameter: the most specific that reaches it, the last of those.

        ``term``: the fixed-effect term a column belongs to (``b(season)`` reaches ``seasonsummer``).
        """
        hits = [s for s in self.statements
                if s.cls == cls and s.group in ("", group) and s.coef in {"", coef, term or coef}]
        return max(reversed(hits), key=lambda s: s.reach) if hits else None

    def lkj_eta(self, group: str) -> float:
        """LKJ shape of a group's correlation matrix: its own statement, else the class's, else 1."""
        s = self.chosen("cor", group)
        return s.value if s is not None else DEFAULT_ETA


def lkj_marginal(eta: float, k: int):
    """The prior of one correlation of a ``k x k`` LKJ(``eta``) correlation matrix, as a scipy distribution.

    Every off-diagonal element has the same marginal: Beta(a, a) with a = eta - 1 + k/2, rescaled
    from (0, 1) to (-1, 1) (Lewandowski, Kurowicka and Joe 2009, section 3.2). For k = 2 and
    eta = 1 it is uniform; a larger eta or a larger block pulls each correlation towards 0.
    """
    if k < 2 or not eta > 0:
        raise ValueError(f"an LKJ prior needs a block of at least 2 coefficients and eta > 0, not k={k}, eta={eta}")
    from scipy import stats

    a = eta - 1 + k / 2
    return stats.beta(a, a, loc=-1.0, scale=2.0)
