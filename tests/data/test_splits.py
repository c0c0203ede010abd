import os
import subprocess
import sys

import pytest

from dialsum.data import load_splits, normalize, read_split, write_submission
from dialsum.errors import DataError

HEADER = "fname,dialogue,summary\n"


def test_normalize_competition_noise():
    raw = "\ufeff#Person1#: 안녕하세요.\\n#Person2#:   네,  안녕하세요.<br>#Person1#: 잘 가요.<BR />\r\n\n"
    assert normalize(raw) == "#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.\n#Person1#: 잘 가요."


def test_bundled_sample_loads_with_noise_normalised():
    splits = load_splits(None)
    assert set(splits) == {"train", "dev", "test"}
    assert all(ex.summary for ex in splits["dev"]) and all(ex.summary is None for ex in splits["test"])
    assert not any("<br>" in ex.dialogue or "\\n" in ex.dialogue for s in splits.values() for ex in s)


def _csv(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    "content, split, message",
    [
        ("fname,dialogue\nd1,hi\n", "dev", r"missing column\(s\) summary"),
        (HEADER + "d1,안녕,요약\nd1,또,요약\n", "train", r"row 2 \(fname d1\): duplicate fname, first seen at row 1"),
        (HEADER + 'd1,"  <br> ",요약\n', "train", r"row 1 \(fname d1\): empty dialogue"),
        (HEADER + "d1,안녕,\n", "dev", r"row 1 \(fname d1\): the dev split needs a summary"),
        (b"fname,dialogue,summary\n" + "d1,안녕,요약\n".encode("cp949"), "train", "not valid UTF-8"),
    ],
)
def test_bad_files_name_file_and_row(tmp_path, content, split, message):
    path = _csv(tmp_path, f"{split}.csv", content)
    with pytest.raises(DataError, match=message) as err:
        read_split(path, split)
    assert str(path) in str(err.value)


def test_cli_bad_data_exits_nonzero_without_traceback(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER + "d1,안녕,요약\nd1,또,요약\n", encoding="utf-8")
    (tmp_path / "dev.csv").write_text(HEADER + "v1,안녕,요약\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "train", "--models", "tiny-bart", "--data", str(tmp_path), "--debug"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DIALSUM_OUTPUT_DIR": str(tmp_path / "out")},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"{tmp_path / 'train.csv'}: row 2 (fname d1): duplicate fname" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_submission_shape(tmp_path):
    path = tmp_path / "p" / "test.csv"
    write_submission(path, ["test_0", "test_1"], ["요약 하나", "#Person1#는 갑니다."])
    assert path.read_text(encoding="utf-8").splitlines() == [
        ",fname,summary",
        "0,test_0,요약 하나",
        "1,test_1,#Person1#는 갑니다.",
    ]
