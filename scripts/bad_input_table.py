"""The table of bad-input cases and the one line each prints, written from the test suite itself.

Runs ``tests/test_bad_input.py`` with ``BAD_INPUT_TABLE`` set, so every case records the ``error:``
line it asserted, and writes them as a markdown table (temporary folders shown as ``<tmp>/``).

    python scripts/bad_input_table.py --out docs/results/bad_input.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/results/bad_input.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "cases.jsonl"
        env = dict(os.environ, BAD_INPUT_TABLE=str(record))
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "", "tests/test_bad_input.py"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
        rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    lines = ["# Bad input: the one line each case prints", "",
             f"`python scripts/bad_input_table.py` ran `{' '.join(cmd[1:])}`: {summary}. Each case also "
             "asserts exit status 1, no traceback in the output and every file written before it "
             "unchanged (see the test file). Temporary folders are shown as `<tmp>/`.", "",
             "| # | case | message |", "|---|---|---|"]  # fmt: skip
    for i, row in enumerate(rows, 1):
        message = row["message"].replace("|", "\\|")
        lines.append(f"| {i} | `{row['case']}` | {message} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} cases -> {args.out} ({summary})")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
