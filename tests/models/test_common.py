from dialsum.models.common import cut_targets, length_grouped_batches, pad_batch


def test_pad_batch_pads_to_longest_only():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}]
    right = pad_batch(feats, pad_id=0, aligned_labels=True)
    assert right["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    left = pad_batch([{"input_ids": [5, 6]}, {"input_ids": [5]}], pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[5, 6], [0, 5]] and left["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_cut_targets_keep_the_end_token_and_report_the_cut(caplog):
    targets = [[1, 2, 3, 9], [4, 5, 6, 7, 8, 9], [1, 9]]
    with caplog.at_level("WARNING"):
        cut = cut_targets("m", targets, limit=4)
    assert cut == [[1, 2, 3, 9], [4, 5, 6, 9], [1, 9]]
    assert "1 of 3 summaries exceed max_target_length=4" in caplog.text


def test_length_grouped_batches_cover_all_and_group():
    lengths = [(i * 37) % 101 for i in range(200)]
    batches = length_grouped_batches(lengths, 16, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1


def test_token_budget_batches_stay_within_budget_and_cover_each_row_once():
    import pytest

    from dialsum.models.common import token_budget_batches

    lengths = [5 + (i * 53) % 400 for i in range(300)]
    for multiple, seed, rows in ((1, 0, None), (8, 1, None), (8, None, None), (1, 2, 6)):
        batches = token_budget_batches(lengths, 1200, seed=seed, mega=4, multiple_of=multiple, max_rows=rows)
        assert sorted(i for b in batches for i in b) == list(range(300))
        padded = [-(-n // multiple) * multiple for n in lengths]
        assert all(len(b) * max(padded[i] for i in b) <= 1200 for b in batches)
        assert rows is None or max(len(b) for b in batches) <= rows
    batches = token_budget_batches(lengths, 1200, seed=0, mega=4)
    sizes = [len(b) for b in batches]
    assert max(sizes) >= 4 * min(sizes)  # many short rows or a few long ones
    used = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert used / (len(batches) * 1200) > 0.75  # batches are mostly full (rows up to a third of the budget)
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest rows come first
    with pytest.raises(ValueError, match="longest row"):
        token_budget_batches([10, 2000], 1000, seed=0)
