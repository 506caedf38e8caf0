"""Read data files and prepare them as a study asks (scaling, explicit nesting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError

BUILTIN = "builtin:dragons"
SUFFIXES = (".rdata", ".rda", ".rds", ".csv", ".parquet")


def load(source: str | Path, obj: str | None = None, seed: int | None = None) -> pd.DataFrame:
    """Read a data set.

    Parameters
    ----------
    source : str or Path
        ``"builtin:dragons"`` for the built-in simulator, or a ``.RData``/``.rda``/``.rds``/
        ``.csv``/``.parquet`` file.
    obj : str, optional
        Which data frame of an ``.RData`` file holding several.
    seed : int, optional
        Seed of the built-in simulator (its default when ``None``).

    Returns
    -------
    DataFrame
        String columns become categoricals; the index is reset.
    """
    if str(source) == BUILTIN:
        from bayeslmm.model.simulate import simulate_dragons

        return simulate_dragons() if seed is None else simulate_dragons(seed)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"data path {str(path)!r} is a folder; give a data file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {str(path)!r} is empty")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"cannot read {path.name!r}: use one of {', '.join(SUFFIXES)} (or builtin:dragons)"
        )
    try:
        if suffix in (".rdata", ".rda", ".rds"):
            df = _read_r(path, obj)
        elif suffix == ".csv":
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
    except DataError:
        raise
    except Exception as exc:  # the readers raise many types for a corrupt file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path.name!r} as {suffix[1:]}: {msg[:120]}") from exc
    if not isinstance(df, pd.DataFrame) or df.shape[0] == 0 or df.shape[1] == 0:
        raise DataError(f"data file {path.name!r} holds no rows or no columns")
    return _tidy_types(df)


def _read_r(path: Path, obj: str | None) -> pd.DataFrame:
    import pyreadr

    result = pyreadr.read_r(str(path))
    frames = {k: v for k, v in result.items() if isinstance(v, pd.DataFrame)}
    if not frames:
        raise DataError(f"{path.name!r} holds no data frame")
    if obj is not None:
        if obj not in frames:
            raise DataError(f"{path.name!r} has no object {obj!r}; it holds: {', '.join(frames)}")
        return frames[obj]
    if len(frames) > 1:
        raise DataError(
            f"{path.name!r} holds several data frames ({', '.join(frames)}); choose one with --object NAME"
        )
    return next(iter(frames.values()))


def _tidy_types(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col].dtype):
            df[col] = df[col].astype("category")
    return df


def scale(x: pd.Series | np.ndarray) -> np.ndarray:
    """Standardise like R's ``scale()``: subtract the mean, divide by the sd (n - 1)."""
    a = np.asarray(x, dtype=float)
    return (a - a.mean()) / a.std(ddof=1)


def nest(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Explicit nesting like R's ``factor(a:b)``: labels ``"Bavarian:a"``, levels sorted."""
    labels = df[columns[0]].astype(str)
    for c in columns[1:]:
        labels = labels + ":" + df[c].astype(str)
    return pd.Series(pd.Categorical(labels), index=df.index)


def prepare(
    df: pd.DataFrame,
    scale_map: Mapping[str, str] | None = None,
    nest_map: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Add the study's derived columns.

    Parameters
    ----------
    df : DataFrame
    scale_map : mapping, optional
        New column -> column to standardise (``{"bodyLength2": "bodyLength"}``).
    nest_map : mapping, optional
        New column -> columns to nest (``{"sample": ["mountainRange", "site"]}``).

    Returns
    -------
    DataFrame
        A copy with the new columns.
    """
    out = df.copy()
    for new, src in (scale_map or {}).items():
        _require(out, [src], f"scale.{new}")
        if not pd.api.types.is_numeric_dtype(out[src]):
            raise DataError(f"cannot scale {src!r}: it is not numeric")
        out[new] = scale(out[src])
    for new, cols in (nest_map or {}).items():
        _require(out, cols, f"nest.{new}")
        out[new] = nest(out, cols)
    return out


def _require(df: pd.DataFrame, cols: Sequence[str], where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"{where} names column(s) {', '.join(map(repr, missing))} not in the data; "
            f"columns are: {', '.join(map(str, df.columns))}"
        )
