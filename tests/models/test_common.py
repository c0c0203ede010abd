from dialsum.models.common import length_grouped_batches, pad_batch


def test_pad_batch_pads_to_longest_only():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}]
    right = pad_batch(feats, pad_id=0, aligned_labels=True)
    assert right["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    left = pad_batch([{"input_ids": [5, 6]}, {"input_ids": [5]}], pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[5, 6], [0, 5]] and left["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_length_grouped_batches_cover_all_and_group():
    lengths = [(i * 37) % 101 for i in range(200)]
    batches = length_grouped_batches(lengths, 16, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1
