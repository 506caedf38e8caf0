"""Priors the user sets, in brms's vocabulary: ``cor ~ LKJ(2)``, ``cor(Subject) ~ LKJ(eta = 4)``.

A statement names a class of parameters (brms's ``class``), optionally one grouping factor
(``group``), and a distribution. Only the correlations of correlated random-effect blocks
(class ``cor``, an LKJ prior on each group's correlation matrix) are settable so far; every
other prior is Bambi's default for the formula and data. A statement for a group names a
grouping factor of the formula; a statement without a group sets the class for every group,
and a group's own statement wins over it. The default is LKJ(1), uniform over correlation
matrices, as brms and rstanarm's ``decov`` use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bayeslmm.errors import OptionsError
from bayeslmm.numbers import format_number

#: Classes of parameters whose prior can be set, with the distributions each accepts.
SETTABLE = {"cor": ("LKJ",)}
#: LKJ's shape when no statement sets it (uniform over correlation matrices).
DEFAULT_ETA = 1.0

_STATEMENT = re.compile(r"^\s*(?P<cls>[A-Za-z_]\w*)\s*(?:\(\s*(?P<group>[^()]*?)\s*\))?\s*~\s*"
                        r"(?P<dist>[A-Za-z_]\w*)\s*\((?P<args>[^()]*)\)\s*$")


@dataclass(frozen=True)
class PriorStatement:
    """One prior: ``cls(group) ~ dist(value)``; ``group`` is ``""`` for the whole class."""

    cls: str
    group: str
    dist: str
    value: float

    @property
    def text(self) -> str:
        """The statement as bayeslmm writes it (``cor(Subject) ~ LKJ(eta = 2)``)."""
        where = f"({self.group})" if self.group else ""
        return f"{self.cls}{where} ~ {self.dist}(eta = {format_number(self.value)})"


def parse_prior(text: str) -> PriorStatement:
    """Read one statement; a one-line :class:`OptionsError` names what is wrong and what exists.

    ``cor ~ LKJ(2)`` and ``cor(Subject) ~ LKJ(eta = 2)`` set the LKJ shape ``eta > 0``.
    """
    m = _STATEMENT.match(str(text))
    if m is None:
        raise OptionsError(f"cannot read the prior {text!r}: write it as 'cor ~ LKJ(2)' or 'cor(group) ~ LKJ(eta = 2)'")
    cls, group, dist = m["cls"], (m["group"] or "").strip(), m["dist"]
    if cls not in SETTABLE:
        raise OptionsError(f"prior {text!r}: class {cls!r} cannot be set; settable classes: {', '.join(SETTABLE)} "
                           "(the others take Bambi's default priors)")
    if dist not in SETTABLE[cls]:
        raise OptionsError(f"prior {text!r}: {cls} takes {' or '.join(SETTABLE[cls])}, not {dist}")
    args = [a.strip() for a in m["args"].split(",") if a.strip()]
    if len(args) != 1:
        raise OptionsError(f"prior {text!r}: LKJ takes one argument, eta (e.g. LKJ(2))")
    arg = args[0].split("=", 1)
    if len(arg) == 2 and arg[0].strip() != "eta":
        raise OptionsError(f"prior {text!r}: LKJ's argument is eta, not {arg[0].strip()!r}")
    try:
        value = float(arg[-1])
    except ValueError:
        raise OptionsError(f"prior {text!r}: eta must be a number, not {arg[-1].strip()!r}") from None
    if not value > 0 or value == float("inf"):
        raise OptionsError(f"prior {text!r}: eta must be a positive number")
    return PriorStatement(cls, group, dist, value)


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

    def check_groups(self, groups: tuple[str, ...], correlated: tuple[str, ...]) -> None:
        """Refuse a statement for a group the formula does not have or that has no correlated block."""
        for s in self.statements:
            if s.group and s.group not in groups:
                raise OptionsError(f"prior {s.text!r}: the formula has no grouping factor {s.group!r}; "
                                   f"its grouping factors are {', '.join(groups) or 'none'}")
            if s.group and s.cls == "cor" and s.group not in correlated:
                raise OptionsError(f"prior {s.text!r}: {s.group} has no correlated random effects; "
                                   "a cor prior needs a term like (1 + x|group)")

    def lkj_eta(self, group: str) -> float:
        """LKJ shape of a group's correlation matrix: its own statement, else the class's, else 1."""
        own = [s.value for s in self.statements if s.cls == "cor" and s.group == group]
        every = [s.value for s in self.statements if s.cls == "cor" and not s.group]
        return (own or every or [DEFAULT_ETA])[-1]


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
