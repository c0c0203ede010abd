"""Model profiles the tests write on the fly, shaped from the shipped tiny configs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16


def long_profile(folder: Path, name: str = "long-bart", steps: int = STEPS, every: int = 3) -> Path:
    """tiny-bart (with dropout) for `steps` steps of two micro-batches each (five steps an epoch), checkpointing
    every `every` steps."""
    base = (ROOT / "configs" / "models" / "tiny-bart.yaml").read_text(encoding="utf-8").split("\ntraining:")[0]
    path = folder / f"{name}.yaml"
    path.write_text(
        base + f"\ntraining: {{epochs: 1, batch_size: 4, grad_accum: 2, learning_rate: 3.0e-3, "
        f"length_group_batches: 2, debug_rows: 40, debug_steps: {steps}, checkpoint_every: {every}}}\n"
        "generation: {batch_size: 48, max_new_tokens: 24, num_beams: 1}\n",
        encoding="utf-8",
    )
    return path
