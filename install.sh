#!/usr/bin/env bash
# Reproducible install into ./.venv, CPU build of torch unless the venv already has a torch.
# A bare "torch" from PyPI is the multi-GB CUDA build, so the CPU wheel is pinned by its local
# version (+cpu): from pip's configured indexes or wheel folders if they have it (this machine's
# do), else from PyTorch's CPU index. On a GPU machine, install the torch build you want into
# ./.venv first; the package itself accepts any torch >= 2.4.
set -euo pipefail
cd "$(dirname "$0")"
extra="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # PyPI has no "+cpu" wheels, so where the configured indexes lack it the first try fails fast.
  python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null ||
    python -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
if [ -n "$extra" ]; then
  python -m pip install -q -e ".[$extra]"
else
  python -m pip install -q -e .
fi
