"""Fuzz-style robustness: random bytes, random formulas and random option values never give a
traceback, never hang, and never leave a partial output folder. Seeded, so failures reproduce."""

import signal
from contextlib import contextmanager

import numpy as np
import pytest

from bayeslmm.cli import _options, _run_options, build_parser, main
from bayeslmm.engines import bayes
from bayeslmm.errors import BayeslmmError
from bayeslmm.model import checks
from bayeslmm.model.formula import parse

RNG_SEED = 20261126


@contextmanager
def time_limit(seconds: int):
    def boom(*_):
        raise TimeoutError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _assert_clean(code, err, out_dir):
    assert code in (0, 2, 3), code
    assert "Traceback" not in err
    if code != 0:
        assert err.strip().splitlines()[-1].startswith("error: "), err
        assert not out_dir.exists(), "a failed run left an output folder"
    assert not list(out_dir.parent.glob(f".{out_dir.name}.partial-*"))


@pytest.mark.parametrize("suffix", [".csv", ".RData", ".rds", ".parquet", ".rda"])
def test_random_bytes(tmp_path, capsys, suffix):
    rng = np.random.default_rng(RNG_SEED + len(suffix))
    for i in range(6):
        path = tmp_path / f"junk{i}{suffix}"
        path.write_bytes(rng.bytes(int(rng.integers(1, 5000))))
        out = tmp_path / f"out{i}"
        with time_limit(60):
            code = main(["fit", str(path), "testScore ~ bodyLength + (1|site)", "--out", str(out), "--draws", "5",
                         "--tune", "5", "--chains", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2
        _assert_clean(code, err, out)


TERMS = ["bodyLength2", "bodyLength", "site", "mountainRange", "bodyLength2:site", "I(bodyLength2**2)", "(1|site)",
         "(1|mountainRange/site)", "(bodyLength2||mountainRange)", "(1|mountainRange:site)", "(0 + bodyLength2|site)"]
JUNK = ["(", ")", "|", "||", "+", "~", ":", "*", "-1", "nope", "", "1", "0", "(|)", "((1|site)"]


def _random_formula(rng, columns):
    """Half well-formed (valid terms joined by +), half random tokens from names and syntax."""
    if rng.random() < 0.5:
        terms = rng.choice(TERMS, size=int(rng.integers(1, 4)), replace=False)
        return " + ".join(map(str, terms))
    parts = list(columns) + TERMS + JUNK
    return " ".join(str(rng.choice(parts)) for _ in range(int(rng.integers(1, 9))))


def test_random_formulas(builtin, tmp_path, capsys):
    rng = np.random.default_rng(RNG_SEED)
    columns = [str(c) for c in builtin.columns]
    csv = tmp_path / "d.csv"
    builtin.to_csv(csv, index=False)
    valid, cli_runs = 0, 0
    for i in range(120):
        lhs = "testScore" if rng.random() < 0.6 else str(rng.choice([*columns, "", "nope"]))
        text = f"{lhs} ~ {_random_formula(rng, columns)}" if rng.random() < 0.9 else _random_formula(rng, columns)
        with time_limit(60):
            try:
                f = parse(text)
                rows, _ = checks.validate(f, builtin)
                bayes.build_model(f, bayes.model_data(f, rows))  # Bambi must accept what the checks let through
                valid += 1
                continue
            except BayeslmmError:
                pass
        if cli_runs < 25:  # the same mistake through the CLI: one line, exit 2, nothing written
            cli_runs += 1
            out = tmp_path / f"out{i}"
            code = main(["fit", str(csv), text, "--out", str(out), "--draws", "5", "--tune", "5", "--chains", "1",
                         "--no-progress"])
            _assert_clean(code, capsys.readouterr().err, out)
            assert code == 2
    assert valid > 5 and cli_runs > 5  # the generator explores both sides


#: What an accepted value of each option must be: counts are whole numbers >= 1, the seed >= 0,
#: probabilities strictly between 0 and 1.
VALID = {
    "--draws": lambda v: isinstance(v, int) and v >= 1,
    "--tune": lambda v: isinstance(v, int) and v >= 1,
    "--chains": lambda v: isinstance(v, int) and v >= 1,
    "--seed": lambda v: isinstance(v, int) and v >= 0,
    "--target-accept": lambda v: isinstance(v, float) and 0 < v < 1,
    "--ci": lambda v: isinstance(v, float) and 0 < v < 1,
}


@pytest.mark.parametrize("option", list(VALID))
def test_random_option_values(option):
    """Each value is either refused with a message naming the option, or kept as written and valid
    (the parser and SamplerOptions agree: nothing the parser lets through fails later)."""
    rng = np.random.default_rng(RNG_SEED + len(option))
    values = ["0", "-1", "1e9", "nan", "inf", "", "abc", "1.5", "0.999", "3", "-0.0", "10000000000000000000000"]
    values += [str(v) for v in rng.normal(0, 1000, 10)]
    parser = build_parser()
    accepted, refused = 0, 0
    for value in values:
        try:
            args = parser.parse_args(["fit", "x.csv", "y ~ x", option, value])
        except BayeslmmError as exc:
            assert option in str(exc) and "\n" not in str(exc), (value, str(exc))
            refused += 1
            continue
        kept = getattr(args, option.removeprefix("--").replace("-", "_"))
        assert VALID[option](kept), (value, kept)
        assert kept == type(kept)(value)
        _options(args), _run_options(args)  # SamplerOptions and RunOptions take what the parser accepted
        accepted += 1
    assert accepted >= 1 and refused >= 5  # both sides explored
