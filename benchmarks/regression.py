"""The benchmark as a regression check: a TOML config names datasets x conditions and the figures each is
expected to reach (with a tolerance); ``check_expected`` compares a run's records with them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Sequence


def load_config(path: Path, datasets_root: Path) -> dict:
    """Read a TOML benchmark config: ``datasets`` (names under ``datasets_root``, or paths), ``conditions``,
    ``split``, ``train_split``, ``baseline`` and ``[expected.<dataset>]`` tables of
    ``<condition> = {"nDCG@10" = value, tolerance = t}``. Unknown keys are an error, not ignored."""
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark config not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    known = {"datasets", "conditions", "split", "train_split", "baseline", "expected", "description"}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
    for key in ("datasets", "conditions"):
        if key in config and not (isinstance(config[key], list) and all(isinstance(v, str) for v in config[key])):
            raise ValueError(f"{path}: {key} must be a list of strings")
    config["datasets"] = [Path(d) if ("/" in d or Path(d).is_dir()) else datasets_root / d for d in config.get("datasets", [])]
    names = {p.name for p in config["datasets"]}
    for dataset, conditions in config.get("expected", {}).items():
        if dataset not in names:
            raise ValueError(f"{path}: expected figures for {dataset!r}, which is not among the datasets {sorted(names)}")
        for condition, spec in conditions.items():
            if not isinstance(spec, dict) or not all(isinstance(v, (int, float)) for v in spec.values()):
                raise ValueError(f"{path}: expected.{dataset}.{condition} must be a table of numbers, "
                                 f'e.g. {{ "nDCG@10" = 0.71, tolerance = 0.005 }}')
    return config


def check_expected(records: Sequence[dict], expected: dict) -> list[dict]:
    """Compare figures with ``expected[dataset][condition] = {"nDCG@10": value, "tolerance": t}``.

    A figure below value - tolerance is a regression ("below"); above value + tolerance, "above" (the
    expectation is out of date); otherwise "ok". A condition expected but not run is "missing".
    """
    rows = []
    seen = {(r["dataset"], r["pipeline"]): r for r in records}
    for dataset, conditions in expected.items():
        for condition, spec in conditions.items():
            spec = dict(spec)
            tolerance = float(spec.pop("tolerance", 0.005))
            for metric, value in spec.items():
                r = seen.get((dataset, condition))
                got = None if r is None else r["metrics"].get(metric)
                status = ("missing" if got is None else "below" if got < value - tolerance
                          else "above" if got > value + tolerance else "ok")
                rows.append({"dataset": dataset, "condition": condition, "metric": metric, "expected": value,
                             "tolerance": tolerance, "observed": got, "status": status})
    return rows
