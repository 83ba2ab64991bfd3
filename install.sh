#!/usr/bin/env bash
# Reproducible install into ./.venv. torch is pinned to the CPU build on this machine's disk:
# a bare "torch" would resolve to a multi-GB CUDA build. On a GPU machine, install the torch
# build you want first; the package itself accepts any torch >= 2.4.
set -euo pipefail
cd "$(dirname "$0")"
extra="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
if [ -n "$extra" ]; then
  python -m pip install -q -e ".[$extra]"
else
  python -m pip install -q -e .
fi
