"""Cold start: `latentdiff generate "a red circle" --output X.png --seed 0` in a fresh interpreter.

Each run is a new process (nothing cached in memory but the OS's file cache), timed from launch
to exit, and must leave the PNG behind. Then one more run under `python -X importtime` breaks
the import time down by top-level package: what the `generate` path pays before any work.

    python benchmarks/cold_start.py [--model PATH] [--runs 5] [--env OMP_NUM_THREADS=1 …]

Without --model, random `shapes` weights are written to /tmp/bench_model first (speed does not
depend on the values).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import machine_summary, median, seconds, write_random_model

PROMPT = "a red circle"
DEFAULT_MODEL = Path("/tmp/bench_model")
TARGET_SECONDS = 5.0
HEAVY_PACKAGES = ("transformers", "matplotlib", "diffusers", "scipy", "sklearn", "pandas")
"""Packages that must stay off the `generate` path (each costs 0.5–3 s to import)."""
IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$")


def generate_command(model: Path, output: Path, python_options: Sequence[str] = ()) -> list[str]:
    """The user's command; `python -m latentdiff` only when extra interpreter flags are needed."""
    script = Path(sys.executable).with_name("latentdiff")
    args = ["generate", PROMPT, "--output", str(output), "--seed", "0", "--model", str(model)]
    if not python_options and script.exists():
        return [str(script), *args]
    return [sys.executable, *python_options, "-m", "latentdiff", *args]


def run(command: list[str], env: dict[str, str], output: Path) -> subprocess.CompletedProcess:
    output.unlink(missing_ok=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not output.is_file():
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result


def import_times(stderr: str) -> tuple[float, dict[str, float]]:
    """(total seconds of all imports, {top-level package: cumulative seconds of its import})."""
    total, packages = 0.0, {}
    for line in stderr.splitlines():
        match = IMPORTTIME_LINE.match(line)
        if match is None:
            continue
        self_us, cumulative_us, _, name = match.groups()
        total += int(self_us) / 1e6
        root = name.split(".")[0]
        if name == root:  # a package's own import line covers all of its submodules
            packages[root] = packages.get(root, 0.0) + int(cumulative_us) / 1e6
    return total, packages


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=10, help="import offenders to list")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the child process"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = args.model
    if model is None:
        model = DEFAULT_MODEL
        if not (model / "model.safetensors").is_file():
            write_random_model(model)
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    workdir = Path(tempfile.mkdtemp(prefix="cold_start_"))
    output = workdir / "x.png"
    try:
        command = generate_command(model, output)
        times = [seconds(lambda: run(command, env, output)) for _ in range(args.runs)]
        baseline = seconds(lambda: subprocess.run([sys.executable, "-c", "import torch"], env=env))
        traced = run(generate_command(model, output, ["-X", "importtime"]), env, output)
    finally:
        shutil.rmtree(workdir)
    report(args, env, command, times, baseline, *import_times(traced.stderr))


def report(
    args: argparse.Namespace,
    environ: dict[str, str],
    command: list[str],
    times: list[float],
    baseline: float,
    import_total: float,
    packages: dict[str, float],
) -> None:
    print(machine_summary(environ))
    print(f"cold start: latentdiff {shlex.join(command[command.index('generate') :])}")
    ours = median(times)
    runs = " ".join(f"{t:.2f}" for t in times)
    print(f"  median {ours:.2f} s over {len(times)} fresh processes: {runs}")
    verdict = "met" if ours <= TARGET_SECONDS else "missed"
    print(f"  target ≤ {TARGET_SECONDS:g} s: {verdict}")
    print(f"  floor: `python -c 'import torch'` takes {baseline:.2f} s")
    print(f"  imports under -X importtime: {import_total:.2f} s in all; by top-level package")
    print("  (cumulative, so a package imported by another is counted in both):")
    for name, cumulative in sorted(packages.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"    {name:<16} {cumulative:6.3f} s")
    heavy = [name for name in HEAVY_PACKAGES if name in packages]
    print(f"  heavy packages on the path: {', '.join(heavy) if heavy else 'none'}")


if __name__ == "__main__":
    main()
