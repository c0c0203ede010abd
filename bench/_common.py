"""Shared benchmark helpers: the shared-data lookup, dev.csv, fixed-width padding, result files, and the smoke
mode every benchmark has: `python bench/<name>.py --smoke` runs tiny sizes in seconds and writes its JSON to a
temp folder, never to bench/results/ (tests/test_bench.py runs each one, so a broken benchmark fails CI)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KOBART = Path("data/reference/kobart-tokenizer")
QWEN3 = Path("data/reference/qwen3-4b-instruct-2507")
LLAMA3 = Path("data/reference/llama-3.2-korean-bllossom-3b")
DEV_CSV = Path("data/competition/dev.csv")
SMOKE = "--smoke" in sys.argv[1:]


def sized(full, smoke):
    """`full` for a real run, `smoke` under --smoke."""
    return smoke if SMOKE else full


def smoke_args() -> list[str]:
    """Arguments that carry the mode to a benchmark's own subprocesses."""
    return ["--smoke"] if SMOKE else []


def run_variant(script: str, variant: str, measure) -> dict:
    """One variant measured in a process of its own, so nothing carries over between variants: a new
    interpreter running `script --variant VARIANT` (which prints its JSON last), or under --smoke a fork of this
    one calling `measure(variant)` (no second round of imports)."""
    if not SMOKE:
        out = subprocess.run(
            [sys.executable, script, "--variant", variant], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out.strip().splitlines()[-1])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        code = 0
        try:
            os.write(write, json.dumps(measure(variant)).encode())
        except BaseException:  # reported by the parent as a failed variant
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{Path(script).name}: variant {variant} failed")
    return json.loads(data)


def variant_arg() -> str | None:
    """The X of `--variant X`: a benchmark measuring one variant in a fresh process of its own."""
    args = sys.argv[1:]
    return args[args.index("--variant") + 1] if "--variant" in args[:-1] else None


def use_repo_configs() -> None:
    """Resolve configs/ from the repository whatever the working directory."""
    os.environ.setdefault("DIALSUM_CONFIG_DIR", str(ROOT / "configs"))
    from dialsum.settings import get_settings

    get_settings.cache_clear()


def shared_dir() -> Path | None:
    """The read-only `shared/` folder beside the repository root, or None where it is absent."""
    path = (ROOT / ".." / "shared").resolve()
    return path if (path / "data").is_dir() else None


def require_shared(name: str) -> Path:
    """The shared folder; without it, say so and exit 0 (the benchmark is skipped, not failed)."""
    path = shared_dir()
    if path is None:
        print(f"{name}: skipped, no shared data folder at {ROOT.parent / 'shared'}")
        sys.exit(0)
    return path


def causal_config(name: str, folder: Path, **overrides):
    """configs/models/<name>.yaml with `model` pointed at a local folder; `overrides` are deep-merged and validated."""
    from dialsum.config import CausalLMConfig, deep_merge, load_model_config

    data = deep_merge(load_model_config(name).model_dump(), {"model": str(folder), "tokenizer": None, **overrides})
    return CausalLMConfig.model_validate(data)


def dev_examples(shared: Path, rows: int | None = None):
    from dialsum.data import read_split

    examples = read_split(shared / DEV_CSV, "dev")
    return examples[:rows] if rows else examples


def pad_to(batch: dict, widths: dict[str, int], pad_id: int) -> dict:
    """Right-pad a collated batch so each named tensor is at least `widths[name]` wide."""
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    out = dict(batch)
    for key, width in widths.items():
        if key in out:
            gap = max(0, width - out[key].shape[1])
            out[key] = torch.nn.functional.pad(out[key], (0, gap), value=fill[key])
    return out


def fixed_padding(family, widths: dict[str, int], loss=None) -> SimpleNamespace:
    """A family stand-in for `fit` whose batches are padded to fixed widths (the static-padding baseline);
    `loss` replaces the family's loss when given."""

    def collate(tok, features, for_generation=False, multiple_of=1):
        batch = family.collate(tok, features, for_generation=for_generation, multiple_of=multiple_of)
        return pad_to(batch, widths, tok.pad_token_id)

    return SimpleNamespace(collate=collate, target_count=family.target_count, loss=loss or family.loss)


def full_logits_loss(model, batch: dict, label_smoothing: float = 0.0):
    """The causal-LM loss as it was: logits at every position over the whole vocabulary, upcast to fp32."""
    from dialsum.models.common import token_loss_sum

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return token_loss_sum(logits[:, :-1], batch["labels"][:, 1:], label_smoothing)


def cpu_threads(default: int = 1) -> int:
    """Torch CPU threads for a benchmark: BENCH_THREADS, else `default`.

    One thread by default: on a small shared box, two-thread kernels stall whenever another process holds a
    core, which swamps the effect being measured.
    """
    threads = int(os.environ.get("BENCH_THREADS", default))
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def save_random_lm(arch: str, shape: dict, tok, folder: Path, dtype=torch.float32, device="cpu", seed=0) -> int:
    """Save a random-weight Llama or Qwen3 of `shape` plus `tok` to `folder` like a hub checkpoint; returns N params
    (`dialsum.models.standin.save_random_lm`, which the tests' stand-in checkpoints share)."""
    from dialsum.models.standin import save_random_lm as save

    return save(arch, shape, tok, folder, dtype=dtype, device=device, seed=seed)


def device_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def write_result(
    name: str,
    unit: str,
    ours: float,
    baseline: float,
    ratio: float,
    goal: str,
    details: dict | None = None,
    out_dir: Path | None = None,
) -> None:
    """Print the result and write it to `out_dir` (default bench/results/; in smoke mode a folder removed at once)."""
    result = {"name": name, "unit": unit, "ours": ours, "baseline": baseline, "ratio": ratio, "goal": goal}
    if details:
        result["details"] = details
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if SMOKE and out_dir is None:  # the write is exercised, bench/results/ is left alone, nothing stays behind
        with tempfile.TemporaryDirectory(prefix=f"dialsum-bench-smoke-{name}-") as tmp:
            _write(Path(tmp) / f"{name}.json", text)
    else:
        _write(Path(out_dir or RESULTS) / f"{name}.json", text)
    print(text)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
