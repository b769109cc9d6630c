"""Throughput ratios pooled over several runs of `bench/frontdoor.py` (or `bench/run`).

Why: one run's ratio is the median of ten 2 s slices, each divided by the bare engine's slice
of the same round, and on two shared cores one slice against another moves by ±10 %. A single
run's figure can land a few points either side of a target by chance. Pooling the paired slices
of several runs, with a bootstrap interval for their median, says where a server really stands,
and whether it differs from the reference proxies measured in the same runs.

    python bench/pooled.py RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

BARE = "bare"
TRACED_BARE = "bare engine, its own tracing on"


def _frontdoor(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        run = data["frontdoor"] if "frontdoor" in data else data  # bench/run wraps it
        run["servers"][BARE]["query_throughput_slices"]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"pooled: cannot read {path}: {exc}") from None
    except (KeyError, TypeError):
        raise SystemExit(f"pooled: {path} has no saturated-throughput slices; give it the JSON that "
                         "bench/frontdoor.py --json or bench/run writes") from None
    return run  # type: ignore[no-any-return]


def paired_ratios(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each server's slices divided by the baseline's slice of the same round, over all runs."""
    pooled: dict[str, list[float]] = {}
    for run in runs:
        servers = run["servers"]
        bare = servers[BARE]["query_throughput_slices"]
        traced_bare = servers.get(TRACED_BARE, {}).get("query_throughput_slices")
        for name, figures in servers.items():
            slices = figures.get("query_throughput_slices")
            if not slices or name == BARE:
                continue
            pooled.setdefault(name, []).extend(mine / base for mine, base in zip(slices, bare))
            if traced_bare and name.startswith("guard+"):
                pooled.setdefault(f"{name} (vs {TRACED_BARE})", []).extend(
                    mine / base for mine, base in zip(slices, traced_bare))
    return pooled


def median_interval(ratios: list[float], draws: int = 2000, seed: int = 1) -> tuple[float, float, float]:
    """The median and a 95 % bootstrap interval for it."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return statistics.median(ratios), medians[int(draws * 0.025)], medians[int(draws * 0.975)]


def report(paths: list[Path]) -> str:
    runs = [_frontdoor(path) for path in paths]
    lines = [f"saturated query throughput, paired slices pooled over {len(runs)} runs",
             f"{'':76}{'slices':>7}{'median':>8}  95 % interval"]
    for name, ratios in paired_ratios(runs).items():
        median, low, high = median_interval(ratios)
        lines.append(f"{name:76}{len(ratios):>7}{median:>8.3f}  {low:.3f}-{high:.3f}")
    adds = {name: [run["servers"][name]["add_throughput_ratio"] for run in runs
                   if run["servers"].get(name, {}).get("add_throughput_ratio")] for name in runs[0]["servers"]}
    lines.append("add throughput ratio per run (mean)")
    for name, values in adds.items():
        if values:
            lines.append(f"{name:76}{' '.join(f'{v:.3f}' for v in values)}  ({statistics.fmean(values):.3f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="JSON written by bench/frontdoor.py --json or bench/run")
    print(report(parser.parse_args().runs))


if __name__ == "__main__":
    main()
