"""Wall time of the health probe, side by side with a bare Python start-up, in one run.

The probe runs inside Docker HEALTHCHECK and Kubernetes exec probes, so its start-up is
paid on every check: it must stay well under 100 ms on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.procs import Guard  # noqa: E402


def _wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - started) * 1000


def run(rounds: int = 30) -> dict[str, Any]:
    with Guard() as guard:
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "probe (liveness)": [sys.executable, "-m", "chromaguard.probe", guard.url],
            "probe --ready": [sys.executable, "-m", "chromaguard.probe", guard.url, "--ready"],
        }
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(rounds):
            for key, cmd in commands.items():
                samples[key].append(_wall(cmd))
    base = statistics.median(samples["python -c pass"])
    return {key: {"p50_ms": statistics.median(v), "max_ms": max(v),
                  "ratio_to_python_startup": statistics.median(v) / base} for key, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.rounds)
    print(f"{'':20}{'p50 ms':>9}{'max ms':>9}{'x python':>10}")
    for key, row in result.items():
        print(f"{key:20}{row['p50_ms']:>9.1f}{row['max_ms']:>9.1f}{row['ratio_to_python_startup']:>10.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
