"""The benchmark as a regression check: a TOML config names datasets x conditions and the figures each is
expected to reach (with a tolerance); ``check_expected`` compares a run's records with them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Sequence


def load_config(path: Path, datasets_root: Path) -> dict:
    """Read a TOML benchmark config: ``datasets`` (names under ``datasets_root``, or paths), ``conditions``,
    ``split``, ``train_split``, ``baseline`` and ``[expected.<dataset>]`` tables of
    ``<condition> = {"nDCG@10" = value, tolerance = t}`` (a reranker condition's also ``depth = k`` and
    ``"nDCG@10 at depth j" = value``: ``check_expected``). Unknown keys are an error, not ignored."""
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
            others = [k for k in spec if " at depth " in k]
            if others and "depth" not in spec:
                raise ValueError(f"{path}: expected.{dataset}.{condition} gives {others[0]!r} but not the depth its "
                                 f"other figures are at: add depth = <k>")
            for k in others:
                metric, _, at = k.partition(" at depth ")
                if metric not in spec or not at.isdigit():
                    raise ValueError(f"{path}: expected.{dataset}.{condition}: {k!r} must read '<metric> at depth <k>' "
                                     f"for a metric the table also gives (e.g. \"nDCG@10 at depth 5\")")
    return config


def _at_depth(metric: str, depth) -> str:
    return f"{metric} at depth {depth}"


def check_expected(records: Sequence[dict], expected: dict) -> list[dict]:
    """Compare figures with ``expected[dataset][condition] = {"nDCG@10": value, "tolerance": t}``.

    A figure below value - tolerance is a regression ("below"); above value + tolerance, "above" (the
    expectation is out of date); otherwise "ok". A condition expected but not run is "missing".

    A reranker condition built under a latency budget takes the depth this machine's speed admits, and its figures
    follow the depth. Its spec may then say at which ``depth`` its figures are, and give others as
    ``"<metric> at depth <k>" = value``: a run at another depth is compared with that depth's figure, or, where
    the config has none, is "other depth" (reported; not a regression: the machine, not the code, moved it).
    """
    rows = []
    seen = {(r["dataset"], r["pipeline"]): r for r in records}
    for dataset, conditions in expected.items():
        for condition, spec in conditions.items():
            spec = dict(spec)
            tolerance = float(spec.pop("tolerance", 0.005))
            depth = spec.pop("depth", None)
            others = {k: spec.pop(k) for k in [k for k in spec if " at depth " in k]}
            r = seen.get((dataset, condition))
            ran_at = None if r is None else (r.get("fusion") or {}).get("depth")
            for metric, value in spec.items():
                got = None if r is None else r["metrics"].get(metric)
                if depth is not None and ran_at is not None and ran_at != depth:
                    value = others.get(_at_depth(metric, ran_at))
                status = ("missing" if got is None else "other depth" if value is None else "below"
                          if got < value - tolerance else "above" if got > value + tolerance else "ok")
                rows.append({"dataset": dataset, "condition": condition, "metric": metric, "expected": value,
                             "tolerance": tolerance, "observed": got, "status": status,
                             "depth": ran_at if depth is not None else None})
    return rows
