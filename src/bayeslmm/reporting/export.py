"""Tables as text, Markdown, LaTeX or HTML (the tutorial's stargazer step)."""

from __future__ import annotations

import html
import re
from typing import Literal, get_args

import numpy as np
import pandas as pd

from bayeslmm.errors import OptionsError
from bayeslmm.numbers import DIGITS, format_interval, format_number

Format = Literal["text", "markdown", "latex", "html"]
SUFFIX = {"text": "txt", "markdown": "md", "latex": "tex", "html": "html"}


def compact_side(side: pd.DataFrame, digits: int = DIGITS) -> pd.DataFrame:
    """The side-by-side table of one model, formatted to read on one screen.

    Columns: parameter, lme4 (estimate, SE), its CI and what kind it is, posterior mean,
    median, sd, the equal-tailed interval, where the two disagree, and the posterior's power-scaling
    sensitivity to the prior and the likelihood (:func:`sensitivity_text`, when the table has it); numbers
    with ``digits`` significant digits (:func:`~bayeslmm.numbers.format_number`). The interval mass is read from the
    table's ``ci`` column (95% without one).
    """
    level = float(side["ci"].iloc[0]) if "ci" in side and len(side) else 0.95

    def num(v: float) -> str:
        return format_number(v, digits)

    def interval(lo: float, hi: float) -> str:
        return format_interval(lo, hi, digits)

    rows = []
    for _, r in side.iterrows():
        se = f" ({num(r['lme4_std_error'])})" if np.isfinite(r["lme4_std_error"]) else ""
        kind = f" {r['lme4_ci']}" if r["lme4_ci"] and np.isfinite(r["lme4_conf_low"]) else ""
        rows.append({
            "parameter": r["term"] if r["effect"] == "fixed" else f"{r['term']} ({r['group']})",
            "lme4 (SE)": f"{num(r['lme4_estimate'])}{se}",
            f"lme4 {level:.0%} CI": interval(r["lme4_conf_low"], r["lme4_conf_high"]) + kind,
            "posterior mean": num(r["post_mean"]),
            "median": num(r["post_median"]),
            "sd": num(r["post_sd"]),
            f"{level:.0%} interval": interval(r["post_conf_low"], r["post_conf_high"]),
            "agreement": r["agreement"],
            **({"truth": num(r["truth"]) if np.isfinite(r["truth"]) else ""} if "truth" in side else {}),
            **({SENSITIVITY: sensitivity_text(r)} if "prior_sensitivity" in side else {}),
        })
    return pd.DataFrame(rows)


#: The side-by-side table's column of power-scaling sensitivities (:mod:`bayeslmm.summary.sensitivity`).
SENSITIVITY = "sensitivity: prior / likelihood"


def sensitivity_text(row: pd.Series) -> str:
    """``0.079 / 0.072 (prior-data conflict)``: a row's power-scaling sensitivity to the prior and to the
    likelihood (2 significant digits: they are read against 0.05) and priorsense's diagnosis; empty if not computed."""
    p, lik = row.get("prior_sensitivity", np.nan), row.get("likelihood_sensitivity", np.nan)
    if not (np.isfinite(p) and np.isfinite(lik)):
        return ""
    diagnosis = row.get("sensitivity", "")
    diagnosis = diagnosis if isinstance(diagnosis, str) else ""  # a CSV read back has NaN for none
    return f"{format_number(p, 2)} / {format_number(lik, 2)}" + (f" ({diagnosis})" if diagnosis else "")


def compact_ratios(ratios: pd.DataFrame, digits: int = DIGITS) -> pd.DataFrame:
    """One model's odds ratios or rate ratios (:func:`~bayeslmm.summary.sidebyside.ratio_table`), formatted as
    :func:`compact_side` formats the side-by-side table."""
    level = float(ratios["ci"].iloc[0]) if len(ratios) else 0.95
    rows = []
    for _, r in ratios.iterrows():
        kind = f" {r['lme4_ci']}" if r["lme4_ci"] and np.isfinite(r["lme4_conf_low"]) else ""
        rows.append({
            "term": r["term"], "exp(estimate)": r["scale"],
            "lme4": format_number(r["lme4_ratio"], digits),
            f"lme4 {level:.0%} CI": format_interval(r["lme4_conf_low"], r["lme4_conf_high"], digits) + kind,
            "posterior mean": format_number(r["post_mean"], digits),
            "median": format_number(r["post_median"], digits),
            f"{level:.0%} interval": format_interval(r["post_conf_low"], r["post_conf_high"], digits),
            "prediction (typical group)": r["predicted"],
            "prediction: posterior mean": format_number(r["predicted_mean"], digits),
            f"prediction: {level:.0%} interval": format_interval(r["predicted_conf_low"], r["predicted_conf_high"],
                                                                 digits),
        })
    return pd.DataFrame(rows)


def render(df: pd.DataFrame, fmt: Format = "text", caption: str = "", digits: int = DIGITS) -> str:
    """Render a table in one of the formats.

    Parameters
    ----------
    df : DataFrame
    fmt : {"text", "markdown", "latex", "html"}
    caption : str
        Title of the table (a caption in LaTeX and HTML, a line above it otherwise).
    digits : int
        Significant digits of numeric cells (:func:`~bayeslmm.numbers.format_number`).
    """
    if fmt not in get_args(Format):
        raise OptionsError(f"--format must be one of {', '.join(get_args(Format))}, not {fmt!r}")
    cells = [[_cell(v, digits) for v in row] for row in df.itertuples(index=False)]
    cols = [str(c) for c in df.columns]
    if fmt == "text":
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
        return (caption + "\n" if caption else "") + "\n".join(lines) + "\n"
    if fmt == "markdown":
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in r) + " |" for r in cells]
        return (f"*{caption}*\n\n" if caption else "") + "\n".join(lines) + "\n"
    if fmt == "latex":
        esc = _latex_escape
        lines = ["% needs \\usepackage{booktabs} (\\toprule, \\midrule, \\bottomrule)", "\\begin{table}[ht]",
                 "\\centering"]
        if caption:
            lines.append(f"\\caption{{{esc(caption)}}}")
        lines += [f"\\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}", "\\toprule",
                  " & ".join(esc(c) for c in cols) + " \\\\", "\\midrule"]
        lines += [" & ".join(esc(v) for v in r) + " \\\\" for r in cells]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_td(v) for v in r) + "</tr>" for r in cells)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _cell(v, digits: int) -> str:
    return format_number(v, digits)


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:e[-+]\d+)?|inf)")


def _td(text: str) -> str:
    """An HTML cell: numbers (and numbers with an SE or interval) right-aligned, words left-aligned."""
    bare = _NUMBER.sub("", text).replace("Wald", "").replace("profile", "")
    wordy = any(c.isalpha() for c in bare)
    return f"<td class='text'>{html.escape(text)}</td>" if wordy else f"<td>{html.escape(text)}</td>"


def _latex_escape(s: str) -> str:
    s = s.replace("\\", "\0")
    for a, b in (("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
                 ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\^{}")):
        s = s.replace(a, b)
    return s.replace("\0", "\\textbackslash{}")
