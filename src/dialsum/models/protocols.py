"""What a model family can do, as typed Protocols: every family is a `Summarizer`; a family whose weights we
fine-tune is also `Trainable`. The pipeline asks a family for a capability, not for its name: a generate-only
family (an API) gets no weights, hub lookup, checkpointer or fit.

A family is a module; these Protocols are satisfied structurally by the module's functions (`isinstance(module,
Trainable)` checks them at run time, as the registry's tests do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Summarizer(Protocol):
    """Writes summaries: one per dialogue, or N candidates per dialogue for MBR; says how it generates.

    `session` is what the family needs to generate (loaded weights and tokenizer, or an API client with its
    cache); `examples` are `data.Example` rows."""

    TRAINABLE: bool

    def summarize(self, cfg: Any, session: Any, examples: Sequence[Any], progress: Any = None) -> list[str]: ...

    def summarize_candidates(
        self, cfg: Any, session: Any, examples: Sequence[Any], progress: Any = None
    ) -> tuple[list[str], list[list[dict]]]: ...

    def generation_settings(self, cfg: Any, session: Any) -> dict: ...


@runtime_checkable
class Trainable(Summarizer, Protocol):
    """A family whose weights are loaded, fine-tuned and saved (the training loop's and preflight's surface)."""

    def load(self, cfg: Any, source: str, placeholders: Sequence[str], adapter: Any = None) -> tuple[Any, Any]: ...

    def build_features(self, cfg: Any, tok: Any, examples: Sequence[Any], with_labels: bool) -> list[dict]: ...

    def collate(self, *args: Any, **kwargs: Any) -> Any: ...

    def target_count(self, *args: Any, **kwargs: Any) -> Any: ...

    def loss(self, *args: Any, **kwargs: Any) -> Any: ...

    def inference_model(self, cfg: Any, model: Any) -> Any: ...

    def generate(self, cfg: Any, model: Any, tok: Any, features: list[dict], progress: Any = None) -> list[str]: ...

    def generate_candidates(
        self, cfg: Any, model: Any, tok: Any, features: list[dict], progress: Any = None
    ) -> tuple[list[str], list[list[dict]]]: ...

    def save(self, model: Any, tok: Any, folder: Any) -> None: ...

    def load_tokenizer(self, *args: Any, **kwargs: Any) -> Any: ...

    def input_overhead(self, *args: Any, **kwargs: Any) -> Any: ...

    def input_limit(self, *args: Any, **kwargs: Any) -> Any: ...

    def target_ids(self, *args: Any, **kwargs: Any) -> Any: ...

    def stop_ids(self, *args: Any, **kwargs: Any) -> Any: ...

    def generate_kwargs(self, cfg: Any, model: Any, tok: Any) -> dict: ...

    def generation_config(self, *args: Any, **kwargs: Any) -> Any: ...

    def candidate_generation_config(self, *args: Any, **kwargs: Any) -> Any: ...

    def no_repeat_exempt_ids(self, *args: Any, **kwargs: Any) -> Any: ...
