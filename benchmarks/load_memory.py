"""Peak RAM of loading an SD checkpoint, against the size of the weights themselves.

Writes a random full-size checkpoint once (an original single file, fp16 and fp32), then loads
each in a fresh process, then reads every page of the weights (memory-mapped weights count
only once read) — latentdiff's `load_model` (modules built on the meta device, tensors
assigned, cast one at a time) and, with `--diffusers`, diffusers' `from_single_file` with the
same config folder — and prints each process's peak RSS minus its RSS after the imports. Each
file is loaded into fp32 modules, and the fp16 file also into fp16 ones (`--dtype fp16`,
diffusers' `torch_dtype=torch.float16`).

    python benchmarks/load_memory.py [--preset sd15] [--workdir /tmp/load-memory] [--diffusers]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, resource, sys
import torch
from latentdiff.checkpoints.sources import LoadOptions, load_model

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

path, tokenizer, library, config, dtype = sys.argv[1:6]
dtype = getattr(torch, dtype)
if library == "diffusers":
    os.environ["HF_HUB_OFFLINE"] = "1"
    from diffusers import StableDiffusionPipeline
before = rss()
if library == "latentdiff":
    components, _ = load_model(path, torch.device("cpu"), LoadOptions(tokenizer=tokenizer), dtype)
    weights = sum(p.numel() * p.element_size() for m in components.modules().values()
                  for p in m.parameters())
else:
    pipe = StableDiffusionPipeline.from_single_file(path, config=config, safety_checker=None,
                                                    torch_dtype=dtype)
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
                  for p in m.parameters())
# Touch one value per 4 KiB page of every parameter: memory-mapped weights count once read.
modules = components.modules().values() if library == "latentdiff" else (pipe.unet, pipe.vae, pipe.text_encoder)
for parameter in (p for m in modules for p in m.parameters()):
    float(parameter.detach().reshape(-1)[::1024].sum())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_minus_start": peak - before, "weights": weights}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sd15")
    parser.add_argument("--workdir", default="/tmp/load-memory")
    parser.add_argument("--diffusers", action="store_true", help="also diffusers' from_single_file")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    files, tokenizer, folder = prepare(args.preset, workdir)
    print(
        f"{args.preset}, random weights; peak RSS of the load, then of reading every weight page, above "
        "the RSS after imports"
    )
    fp16, fp32 = files
    for path, dtype in ((fp32, "float32"), (fp16, "float32"), (fp16, "float16")):
        size = path.stat().st_size
        for library in ("latentdiff", "diffusers") if args.diffusers else ("latentdiff",):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(tokenizer), library, str(folder), dtype],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            peak, weights = result["peak_minus_start"], result["weights"]
            print(
                f"  {path.name:<24} file {size / 2**30:5.2f} GiB  {library:<10} peak "
                f"{peak / 2**30:5.2f} GiB for {weights / 2**30:5.2f} GiB of {dtype} weights "
                f"({peak / weights:.2f}×)"
            )


def prepare(preset: str, workdir: Path) -> tuple[list[Path], Path, Path]:
    """Random single files (fp16, fp32), a CLIP tokenizer folder and a diffusers folder."""
    import torch

    from latentdiff.checkpoints.bundle import build_components
    from latentdiff.checkpoints.single_file import write_single_file
    from latentdiff.checkpoints.sources import read_model, write_model
    from latentdiff.config import PRESETS
    from latentdiff.models.clip_tokenizer import write_byte_level_tokenizer

    files = [workdir / "model-fp16.safetensors", workdir / "model-fp32.safetensors"]
    tokenizer, folder = workdir / "tokenizer", workdir / "diffusers"
    if all(p.exists() for p in (*files, tokenizer, folder)):
        return files, tokenizer, folder
    workdir.mkdir(parents=True, exist_ok=True)
    write_byte_level_tokenizer(tokenizer)
    config = PRESETS[preset]()
    torch.manual_seed(0)
    components = build_components(config, tokenizer=None)  # type: ignore[arg-type]
    states = {name: module.state_dict() for name, module in components.modules().items()}
    for path, dtype in zip(files, (torch.float16, torch.float32), strict=True):
        write_single_file(path, config, states, dtype=dtype)
    del components, states
    weights = read_model(files[0])
    weights.tokenizer = tokenizer
    write_model(weights, folder, to="diffusers")
    return files, tokenizer, folder


if __name__ == "__main__":
    main()
