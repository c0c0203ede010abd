import pytest

from dialsum import metric


def test_identical_korean_scores_100():
    text = "#Person1#는 내일 오후 3시에 병원을 예약합니다."
    assert metric.score([text], [text])["score"] == pytest.approx(100.0)


def test_hangul_is_not_dropped_and_placeholders_stay_whole():
    tokens = metric.morphemes("#Person1#은 #PhoneNumber#로 전화했다")
    assert tokens[0] == "#Person1#" and "#PhoneNumber#" in tokens
    assert "전화" in tokens


def test_hand_checked_pair():
    # morphemes: pred [나, 는, 사과, 를, 먹, 었, 다] ref [나, 는, 배, 를, 먹, 었, 다]
    assert metric.morphemes("나는 사과를 먹었다") == ("나", "는", "사과", "를", "먹", "었", "다")
    result = metric.score(["나는 사과를 먹었다"], ["나는 배를 먹었다"])
    assert result["rouge1"] == pytest.approx(6 / 7)
    assert result["rouge2"] == pytest.approx(
        4 / 6
    )  # bigrams: 나는 는사과 사과를 를먹 먹었 었다 vs 나는 는배 배를 를먹 먹었 었다
    assert result["rougeL"] == pytest.approx(6 / 7)
    assert result["score"] == pytest.approx(100 * (6 / 7 + 4 / 6 + 6 / 7) / 3)


def test_multi_reference_average():
    pred = "나는 사과를 먹었다"
    single_a = metric.score([pred], [pred])
    single_b = metric.score([pred], ["나는 배를 먹었다"])
    both = metric.score([pred], [[pred, "나는 배를 먹었다"]])
    for key in ("rouge1", "rouge2", "rougeL", "score"):
        assert both[key] == pytest.approx((single_a[key] + single_b[key]) / 2)


def test_empty_prediction_scores_zero():
    assert metric.score([""], ["나는 배를 먹었다"])["score"] == 0.0
    assert metric.score(["   "], ["나는 배를 먹었다"])["score"] == 0.0
