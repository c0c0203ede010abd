"""What the CLI shows for API profiles (the chat-API family): the preflight estimate of tokens and cost, checked
against a budget, before any request is sent."""

from __future__ import annotations

import sys


def preflight_api(cfgs: list, data_dir, max_cost_usd: float | None) -> int:
    """Print each API profile's estimate; 1 when one passes the budget (`--max-cost-usd`, else the profile's)."""
    if not cfgs:
        return 0
    from dialsum.data import load_splits
    from dialsum.data.source import resolve
    from dialsum.models import chat_api

    splits = load_splits(resolve(data_dir), optional=("dev", "test"))
    over = []
    for cfg in cfgs:
        est = chat_api.estimate(cfg, splits, splits.get("train", []))
        print(chat_api.format_estimate(cfg, est))
        budget = max_cost_usd if max_cost_usd is not None else cfg.max_cost_usd
        if budget is not None and est["cost_usd"] > budget:
            over.append(f"{cfg.name}: estimated ${est['cost_usd']:.4f} passes the budget of ${budget:g}")
    if over:
        print("dialsum: preflight: " + "; ".join(over), file=sys.stderr)
        return 1
    return 0
