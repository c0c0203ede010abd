"""The response cache of an API run: one JSON line per response, appended (and flushed) as each response
arrives, so a killed run loses only the requests in flight. A key is the hash of everything that decides the
answer: base URL, model, prompt fingerprint (text and version), messages, decoding settings and candidate index.
The API key is never part of a key or a line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def cache_key(base_url: str, model: str, prompt: str, messages: list[dict], decoding: dict, candidate: int) -> str:
    blob = json.dumps(
        {
            "base_url": base_url.rstrip("/"),
            "model": model,
            "prompt": prompt,
            "messages": messages,
            "decoding": decoding,
            "candidate": candidate,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """key -> {"text", "prompt_tokens", "completion_tokens", "latency"}; a torn last line (a kill mid-write) is
    ignored."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = row
                except (ValueError, KeyError, TypeError):
                    continue
        self._fh = None

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, record: dict) -> None:
        row = {"key": key, **record}
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the OS's hands: a killed process loses none of it
        self.entries[key] = row

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        return len(self.entries)
