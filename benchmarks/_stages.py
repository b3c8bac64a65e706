"""Running one benchmark stage in a fresh interpreter, so its peak RSS is its own."""

from __future__ import annotations

import json
import subprocess
import sys


def run_stage(code: str, stage: str, args: dict) -> dict:
    """Run ``code`` as ``python -c code STAGE ARGS_JSON``; return the JSON line it prints
    last, or exit with the stage's stderr when it failed."""
    p = subprocess.run(
        [sys.executable, "-c", code, stage, json.dumps(args)], capture_output=True, text=True
    )
    if p.returncode:
        sys.exit(f"stage {stage} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])
