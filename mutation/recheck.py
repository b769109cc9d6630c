"""Run each mutant mutmut reported as surviving again, with a per-test timeout, and say what it is.

mutmut 3.8.1 reports a mutant whose tests hang in a busy loop (a ``while`` that no longer ends,
a ``return True`` where the loop needed False) as surviving. A test that never ends fails CI, so
such a mutant is killed. This runs the survivors' tests again, one mutant at a time, with
pytest-timeout, and prints each as ``killed``, ``hangs`` (killed by the timeout) or ``survives``.

    python mutation/recheck.py [mutants-dir]    # after mutation/run
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


def survivors(root: pathlib.Path) -> list[str]:
    names = []
    for meta in sorted(root.rglob("*.py.meta")):
        names += [name for name, code in json.loads(meta.read_text())["exit_code_by_key"].items() if code == 0]
    return names


def recheck(root: pathlib.Path, name: str, tests: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "--timeout=20",
                             *sorted(tests)], cwd=root, env={**os.environ, "MUTANT_UNDER_TEST": name},
                            capture_output=True, text=True, timeout=600, check=False)
    if result.returncode == 0:
        return "survives"
    return "hangs" if "Timeout (>20.0s) from pytest-timeout" in result.stdout else "killed"


def main() -> None:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    by_function = json.loads((root / "mutmut-stats.json").read_text())["tests_by_mangled_function_name"]
    for name in survivors(root):
        tests = by_function.get(name.rsplit("__mutmut_", 1)[0], [])
        print(f"{recheck(root, name, tests) if tests else 'no test'}\t{name}", flush=True)


if __name__ == "__main__":
    main()
