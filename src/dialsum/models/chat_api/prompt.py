"""The prompt of the chat-API family: a system message, k example pairs from train.csv chosen per dialogue, then
the dialogue. Examples are chosen by cosine similarity of TF-IDF weighted Kiwi morpheme counts (content morphemes:
nouns, verb and adjective stems, roots, foreign words and numbers; the #PersonN# tags are left out so that they do
not make every dialogue alike). Summaries keep the tags, as the references do; post-processing only puts the
answer on one line, as the metric reads it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from dialsum.data import PLACEHOLDER_RE, Example

CONTENT_TAGS = ("NN", "NR", "NP", "VV", "VA", "XR", "SL", "SN", "SH", "MAG")
_LABEL_RE = re.compile(r"^\s*(요약|summary)\s*[:：]\s*", re.IGNORECASE)


def morphemes(kiwi, texts: Sequence[str]) -> list[Counter]:
    """Content-morpheme counts of each text (placeholders removed), tokenized in one Kiwi batch."""
    cleaned = [PLACEHOLDER_RE.sub(" ", t) for t in texts]
    return [
        Counter(tok.form for tok in tokens if tok.tag.startswith(CONTENT_TAGS)) for tokens in kiwi.tokenize(cleaned)
    ]


class ShotSelector:
    """Picks the k train examples most similar to a dialogue (or the first k, with method `first`)."""

    def __init__(self, train: Sequence[Example], k: int, method: str, max_chars: int) -> None:
        self.pool = [ex for ex in train if ex.summary and len(ex.dialogue) <= max_chars] or list(train)
        self.k, self.method = min(k, len(self.pool)), method
        self._index: dict[str, list[tuple[int, float]]] | None = None
        self._idf: dict[str, float] = {}
        self._kiwi = None

    def _build(self) -> None:
        from dialsum import metric

        self._kiwi = metric.kiwi()
        counts = morphemes(self._kiwi, [ex.dialogue for ex in self.pool])
        df = Counter(form for c in counts for form in c)
        n = len(counts)
        self._idf = {form: math.log((1 + n) / (1 + d)) + 1 for form, d in df.items()}
        index: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for i, c in enumerate(counts):
            vec = self._weigh(c)
            for form, w in vec.items():
                index[form].append((i, w))
        self._index = dict(index)

    def _weigh(self, counts: Counter) -> dict[str, float]:
        vec = {f: (1 + math.log(c)) * self._idf.get(f, 1.0) for f, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in vec.values())) or 1.0
        return {f: w / norm for f, w in vec.items()}

    def choose(self, dialogues: Sequence[Example]) -> list[list[Example]]:
        """The examples for each dialogue, most similar first; never the dialogue itself."""
        if self.k == 0:
            return [[] for _ in dialogues]
        if self.method == "first":
            return [[ex for ex in self.pool if ex.fname != d.fname][: self.k] for d in dialogues]
        if self._index is None:
            self._build()
        chosen = []
        for d, counts in zip(dialogues, morphemes(self._kiwi, [d.dialogue for d in dialogues])):
            scores: dict[int, float] = defaultdict(float)
            for form, w in self._weigh(counts).items():
                for i, wi in self._index.get(form, ()):
                    scores[i] += w * wi
            ranked = sorted(range(len(self.pool)), key=lambda i: (-scores.get(i, 0.0), i))
            chosen.append([self.pool[i] for i in ranked if self.pool[i].fname != d.fname][: self.k])
        return chosen


def user_message(instruction: str, dialogue: str) -> str:
    return f"{instruction}\n\n대화:\n{dialogue}"


def messages(cfg, dialogue: Example, shots: Sequence[Example]) -> list[dict[str, str]]:
    """system, (user, assistant) per example, then the dialogue to summarize."""
    out = [{"role": "system", "content": cfg.system_prompt}]
    for ex in shots:
        out += [
            {"role": "user", "content": user_message(cfg.instruction, ex.dialogue)},
            {"role": "assistant", "content": ex.summary},
        ]
    out.append({"role": "user", "content": user_message(cfg.instruction, dialogue.dialogue)})
    return out


def clean(text: str) -> str:
    """What the metric needs: one line, no leading `요약:` label, no surrounding quotes or spaces."""
    line = " ".join(text.split())
    line = _LABEL_RE.sub("", line).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'“”":
        line = line[1:-1].strip()
    return line
