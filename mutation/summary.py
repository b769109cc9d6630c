"""The mutation run's score per module, as a Markdown table (from mutmut's ``mutants/`` state)."""

from __future__ import annotations

import collections
import json
import pathlib
import sys

# mutmut's exit codes: 0 the tests passed (the mutant survived), 1 they failed (killed),
# 33 no test covers the mutated function, -24 timed out (counted as killed), None not run.
LABELS = {1: "killed", -24: "killed", 0: "survived", 33: "no test", None: "not run"}


def main() -> None:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    rows = []
    for meta in sorted(root.rglob("*.py.meta")):
        counts: collections.Counter[str] = collections.Counter(
            LABELS.get(code, "other") for code in json.loads(meta.read_text())["exit_code_by_key"].values())
        tried = counts["killed"] + counts["survived"]
        score = f"{100 * counts['killed'] / tried:.0f} %" if tried else "-"
        rows.append((meta.name.removesuffix(".meta"), counts, score))
    print("| module | mutants | killed | survived | no test | score (killed / tested) |")
    print("|---|---|---|---|---|---|")
    for name, c, score in rows:
        print(f"| `{name}` | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['no test']} | {score} |")


if __name__ == "__main__":
    main()
