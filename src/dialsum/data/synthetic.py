"""The bundled sample dataset: templated Korean dialogues in competition format.

Every summary is a deterministic function of its dialogue (a template plus copied slot values), so even a tiny
model can learn it in seconds, which makes the sample a real end-to-end check of masking, decoding and the
metric. Some rows carry the competition's noise (a literal '\\n', <br> tags) to exercise normalisation.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

NAMES = ["민수", "지영", "서연", "준호", "하은", "도윤", "Jimmy", "Sarah", "Tom", "유진", "현우", "수빈"]
PLACES = ["식당", "병원", "미용실", "치과", "호텔", "카페", "도서관", "헬스장"]
TIMES = ["오후 3시", "오전 10시", "저녁 7시", "내일 오후 2시", "금요일 오전 9시", "토요일 저녁 6시"]
ITEMS = ["노트북", "운동화", "우산", "가방", "휴대폰", "자전거", "책상", "커피 머신"]
PRICES = ["2만 원", "5만 원", "10만 원", "15만 원", "30만 원"]
SYMPTOMS = ["두통", "기침", "복통", "허리 통증", "알레르기"]
CITIES = ["부산", "제주", "서울", "대구", "광주", "강릉"]

# Small talk mixed into dialogues so that length says little about the topic.
FILLERS = [
    "{a}: 오늘 날씨 정말 좋네요.",
    "{b}: 그러게요, 요즘 많이 따뜻해졌어요.",
    "{a}: 잠깐만요, 메모 좀 할게요.",
    "{b}: 천천히 하세요.",
    "{a}: 아, 그렇군요.",
    "{b}: 혹시 더 궁금한 점 있으세요?",
    "{a}: 아니요, 괜찮아요.",
    "{b}: 요즘 일이 많아서 정신이 없네요.",
]

# (topic, dialogue turns, summary); {a}/{b} are the speakers' tags, other fields are slots.
TEMPLATES = [
    (
        "예약",
        [
            "{a}: 안녕하세요, {time}에 {place} 예약하고 싶어요.",
            "{b}: 네, 성함이 어떻게 되세요?",
            "{a}: {name}입니다. 연락처는 #PhoneNumber#예요.",
            "{b}: {time}에 {place} 예약 완료되었습니다.",
        ],
        "{a}는 {name}의 이름으로 {time}에 {place}을(를) 예약합니다.",
    ),
    (
        "쇼핑",
        [
            "{a}: 이 {item} 얼마예요?",
            "{b}: {price}입니다.",
            "{a}: 조금 비싸네요. 그래도 {item} 살게요.",
            "{b}: 감사합니다. 포장해 드릴게요.",
        ],
        "{a}는 {price}에 {item}을(를) 삽니다.",
    ),
    (
        "의사 상담",
        [
            "{a}: 어디가 불편하세요?",
            "{b}: 며칠째 {symptom} 때문에 힘들어요.",
            "{a}: 약을 처방해 드릴게요. {time}에 다시 오세요.",
            "{b}: 감사합니다, 선생님.",
        ],
        "{b}는 {symptom} 때문에 진료를 받고 {time}에 다시 방문하기로 합니다.",
    ),
    (
        "여행",
        [
            "{a}: 이번 휴가에 어디 갈 거야?",
            "{b}: {city}에 가려고 해. {name}도 같이 가.",
            "{a}: 좋겠다. 언제 출발해?",
            "{b}: {time}에 출발해.",
        ],
        "{b}는 {name}과(와) 함께 {time}에 {city}로 여행을 갑니다.",
    ),
    (
        "분실물",
        [
            "{a}: 실례합니다, 제 {item}을(를) 잃어버렸어요.",
            "{b}: 어디에서 잃어버리셨어요?",
            "{a}: {place}에서요. 주소는 #Address#입니다.",
            "{b}: 찾으면 #PhoneNumber#로 연락드릴게요.",
        ],
        "{a}는 {place}에서 {item}을(를) 잃어버려 {b}에게 도움을 요청합니다.",
    ),
    (
        "약속",
        [
            "{a}: {name}, 오늘 {place}에서 만날래?",
            "{b}: 좋아. 몇 시에 볼까?",
            "{a}: {time} 어때?",
            "{b}: 그래, 그때 보자.",
        ],
        "{a}와 {b}는 {time}에 {place}에서 만나기로 합니다.",
    ),
]
_JOSA_RE = re.compile(r"(\S)(을\(를\)|과\(와\))")
SPLIT_SIZES = {"train": 400, "dev": 48, "test": 48}


def _josa(text: str) -> str:
    """Pick 을/를 and 과/와 by whether the preceding syllable ends in a consonant."""

    def pick(m: re.Match) -> str:
        ch, pair = m.group(1), m.group(2)
        batchim = "가" <= ch <= "힣" and (ord(ch) - 0xAC00) % 28 != 0
        return ch + (pair[0] if batchim else pair[2])

    return _JOSA_RE.sub(pick, text)


def _row(rng: random.Random, index: int) -> tuple[str, str, str]:
    topic, turns, summary = TEMPLATES[index % len(TEMPLATES)]
    speakers = rng.sample(["#Person1#", "#Person2#"], 2) if rng.random() < 0.2 else ["#Person1#", "#Person2#"]
    slots = {
        "a": speakers[0],
        "b": speakers[1],
        "name": rng.choice(NAMES),
        "place": rng.choice(PLACES),
        "time": rng.choice(TIMES),
        "item": rng.choice(ITEMS),
        "price": rng.choice(PRICES),
        "symptom": rng.choice(SYMPTOMS),
        "city": rng.choice(CITIES),
    }
    turns = list(turns)
    for filler in rng.sample(FILLERS, rng.randrange(4)):
        turns.insert(rng.randrange(1, len(turns)), filler)
    lines = [_josa(t.format(**slots)) for t in turns]
    noise = rng.random()
    if noise < 0.1:
        dialogue = "\\n".join(lines)  # a literal backslash-n, as in the official data
    elif noise < 0.2:
        dialogue = "<br>".join(lines)
    else:
        dialogue = "\n".join(lines)
    return dialogue, _josa(summary.format(**slots)), topic


def write_sample(out_dir: Path, seed: int = 13) -> None:
    """Write train.csv, dev.csv (both with summaries) and test.csv (without) to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, size in SPLIT_SIZES.items():
        with open(out_dir / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["fname", "dialogue", "summary", "topic"] if split != "test" else ["fname", "dialogue"])
            for i in range(size):
                dialogue, summary, topic = _row(rng, i + rng.randrange(len(TEMPLATES)))
                writer.writerow(
                    [f"{split}_{i}", dialogue, summary, topic] if split != "test" else [f"{split}_{i}", dialogue]
                )
