"""Span masking and video substitution behave as specified."""

import torch

from avhubert.modules.masking import compute_mask_indices, mask_runs, substitute_video


def test_masks_avoid_padding_equalise_counts_and_respect_ratio():
    lengths = torch.tensor([100, 80, 60, 100])
    pad = torch.arange(100)[None] >= lengths[:, None]
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        mask = compute_mask_indices((4, 100), pad, 0.65, 10, generator=g)
        assert not (mask & pad).any()
        counts = mask.sum(1)
        assert (counts == counts[0]).all(), "masked-frame counts are equalised across the batch"
        # at most prob*len/span + 1 spans of 10 frames on the shortest row
        assert 10 <= counts[0] <= (0.65 * 60 / 10 + 1) * 10


def test_masking_is_reproducible_with_a_seed_and_random_without():
    a = compute_mask_indices((2, 50), None, 0.5, 5, generator=torch.Generator().manual_seed(3))
    b = compute_mask_indices((2, 50), None, 0.5, 5, generator=torch.Generator().manual_seed(3))
    c = compute_mask_indices((2, 50), None, 0.5, 5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_min_masks_and_mask_runs():
    mask = compute_mask_indices((1, 30), None, 0.01, 3, min_masks=2, generator=torch.Generator().manual_seed(0))
    assert 3 <= int(mask.sum()) <= 6
    m = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    b, s, e = mask_runs(m)
    assert b.tolist() == [0, 0, 1] and s.tolist() == [1, 4, 0] and e.tolist() == [3, 5, 2]


def test_same_other_seq_copies_same_positions_from_another_utterance():
    video = torch.arange(3, dtype=torch.float)[:, None, None, None, None].expand(3, 1, 10, 2, 2) * 100
    video = video + torch.arange(10, dtype=torch.float)[None, None, :, None, None]
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 2:5] = True
    out = substitute_video(video, mask, "same_other_seq", generator=torch.Generator().manual_seed(0))
    src_utt = out[:, 0, 2:5, 0, 0] // 100
    assert (src_utt != torch.arange(3)[:, None]).all()
    assert torch.equal(out[:, 0, 2:5, 0, 0] % 100, torch.arange(2, 5, dtype=torch.float).expand(3, 3))
    assert torch.equal(out[~mask[:, None, :, None, None].expand_as(out)], video[~mask[:, None, :, None, None].expand_as(video)])


def test_same_seq_copies_an_equal_length_span_of_the_same_utterance_outside_the_window():
    tsz = 40
    video = torch.arange(tsz, dtype=torch.float)[None, None, :, None, None].repeat(2, 1, 1, 1, 1)
    video[1] += 1000
    mask = torch.zeros(2, tsz, dtype=torch.bool)
    mask[:, 20:25] = True
    for seed in range(10):
        out = substitute_video(video, mask, "same_seq", lengths=torch.tensor([tsz, 30]), generator=torch.Generator().manual_seed(seed))
        for b, length in ((0, tsz), (1, 30)):
            src = out[b, 0, 20:25, 0, 0] - 1000 * b
            assert torch.equal(src - src[0], torch.arange(5.0)) or src[-1] == length - 1  # contiguous (clipped at the end)
            assert not (15 <= src[0] < 25), "source start lies outside [s - len, e)"
            assert (src < length).all()
        assert torch.equal(out[:, :, :20], video[:, :, :20]) and torch.equal(out[:, :, 25:], video[:, :, 25:])


def test_batch_of_one_zeroes_masked_frames():
    video = torch.ones(1, 1, 6, 2, 2)
    mask = torch.tensor([[False, True, True, False, False, False]])
    out = substitute_video(video, mask, "same_seq")
    assert out[0, 0, 1:3].abs().sum() == 0 and out[0, 0, 3:].sum() == 12
