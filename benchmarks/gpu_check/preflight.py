"""Preflight: fail in seconds, with a clear message, where the check cannot run.

Without ``--smoke`` a CUDA card must be usable. Everywhere, the packages
the check imports must be there in versions ``pyproject.toml`` allows (the
GPU machine's own transformers is too old: the carried wheels must be
installed first), and both architectures' processors must load and run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
import time
import tomllib
from pathlib import Path

from benchmarks.gpu_check.worker import ROOT, Context

# distribution -> module, for what the check imports (not lancedb or pypdfium2: it does not index or render)
NEEDED = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers", "safetensors": "safetensors",
          "pillow": "PIL", "numpy": "numpy", "loguru": "loguru", "platformdirs": "platformdirs",
          "psutil": "psutil", "click": "click", "rich": "rich"}
ALSO_SHOWN = {"torchvision": "torchvision", "huggingface_hub": "huggingface_hub", "accelerate": "accelerate",
              "nvidia-ml-py": "pynvml", "pytest": "pytest"}
HOWTO = ("install the carried wheels first: benchmarks/gpu_check_prepare.sh here, then the device command "
         "in docs/benchmarks.md")


def run(ctx: Context) -> None:
    began = time.monotonic()
    ok = _cuda(ctx) and _packages(ctx) and _processors(ctx)
    if ok:
        ctx.rec.md("", f"Preflight passed in {time.monotonic() - began:.1f} s.")


def _cuda(ctx: Context) -> bool:
    import torch

    ctx.rec.md(f"- python {platform.python_version()} ({sys.executable}), {platform.machine()}")
    ctx.rec.md(f"- torch {torch.__version__}, built for CUDA {torch.version.cuda}")
    if ctx.smoke:
        ctx.rec.check("device", True, "--smoke: runs on the CPU on purpose")
        return True
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        ctx.rec.check("device", False, f"no CUDA device visible to torch {torch.__version__} (built for CUDA "
                      f"{torch.version.cuda}): this check needs the GPU machine; use --smoke for the CPU code paths")
        return False
    try:
        torch.ones(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    except Exception as exc:
        ctx.rec.check("device", False, f"CUDA is visible but unusable: {type(exc).__name__}: {exc}")
        return False
    props = torch.cuda.get_device_properties(0)
    ctx.rec.md(f"- card: {props.name}, {props.total_memory / 1024**3:.1f} GiB, compute capability "
               f"{props.major}.{props.minor}, {props.multi_processor_count} SMs; driver {_driver()}")
    ctx.rec.data("device", name=props.name, total_bytes=props.total_memory, capability=[props.major, props.minor],
                 driver=_driver(), cuda=torch.version.cuda, torch=torch.__version__)
    ctx.rec.check("device", True, f"{props.name}")
    if props.major < 8:
        ctx.rec.check("bf16", False, f"compute capability {props.major}.{props.minor}: no bf16, the figures "
                      "would not be the H100/H200 ones")
        return False
    return True


def _driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out = {}
    for item in data["project"]["dependencies"]:
        name = item.split(";")[0]
        for i, ch in enumerate(name):
            if ch in "<>=!~ [":
                out[name[:i].strip().lower()] = name[i:].strip()
                break
        else:
            out[name.strip().lower()] = ""
    return out


def _version(dist: str, module: str) -> tuple[str | None, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    version = getattr(mod, "__version__", None)
    if not isinstance(version, str):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
    return version, str(Path(getattr(mod, "__file__", "") or "?").parent)


def _allowed(version: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        return True  # cannot tell; the imports below still run
    return not spec or SpecifierSet(spec).contains(Version(version), prereleases=True)


def _packages(ctx: Context) -> bool:
    required = _requirements()
    rows, problems = [], []
    for dist, module in {**NEEDED, **ALSO_SHOWN}.items():
        version, where = _version(dist, module)
        spec = required.get(dist, "") if dist in NEEDED else ""
        rows.append([dist, version or "missing", spec or "-", where if version else where[:120]])
        if dist not in NEEDED:
            continue
        if version is None:
            problems.append(f"{dist} cannot be imported ({where}): {HOWTO}")
        elif version != "?" and not _allowed(version, spec):
            problems.append(f"{dist} {version} is installed but ragged needs {dist}{spec}: {HOWTO}")
    ctx.rec.md("")
    ctx.rec.table(["package", "version", "ragged needs", "imported from"])
    for row in rows:
        ctx.rec.row(row)
    ctx.rec.data("packages", rows=rows)
    if not problems:
        problems += _import_ragged(ctx)
    for problem in problems:
        ctx.rec.check("packages", False, problem)
    if not problems:
        ctx.rec.check("packages", True, "every package the check imports is there, in a version ragged allows")
    return not problems


def _import_ragged(ctx: Context) -> list[str]:
    try:
        import ragged
        from ragged.embeddings import ColPaliEmbedder  # noqa: F401
        from ragged.gpu import BatchSizeConfig, Runtime  # noqa: F401
    except Exception as exc:
        return [f"ragged cannot be imported: {type(exc).__name__}: {exc}"]
    where = Path(ragged.__file__).resolve().parent
    ctx.rec.md("", f"- ragged {ragged.__version__} from {where}")
    if ROOT not in where.parents:
        return [f"ragged is imported from {where}, not from this checkout ({ROOT}): put src first on PYTHONPATH"]
    return []


def _processors(ctx: Context) -> bool:
    """Load and run both architectures' processors: a transformers that cannot
    (the GPU image's own crashed on ColModernVBert's) fails here, in seconds."""
    from benchmarks.full_size import BUILDS, processor_for
    from benchmarks.gpu_check.probe import pages

    page = pages(1, seed=0, scale=0.25)
    for name in BUILDS:
        try:
            processor = processor_for(name, ctx.cache)
            tokens = int(processor.process_images(page)["attention_mask"].sum())
        except Exception as exc:
            ctx.rec.check(f"processor {name}", False, f"{type(exc).__name__}: {exc}"[:1000])
            return False
        kind = type(getattr(processor, "image_processor", None)).__name__
        ctx.rec.check(f"processor {name}", True, f"{type(processor).__name__} with {kind}: {tokens} tokens "
                      "for a small page")
    return True

