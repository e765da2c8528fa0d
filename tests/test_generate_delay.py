"""The delay pattern: build/undo is exact, and frame f of codebook i lands at step f + i + 1."""
import pytest
import torch

from deeptalk.delay import (
    build_delay_pattern,
    delayed_length,
    frame_count_from_eos,
    steps_until_frames,
    undo_delay_pattern,
)

PAD, EOS = 1000, 1001


@pytest.mark.parametrize("q,t", [(1, 1), (4, 7), (7, 20), (8, 1)])
def test_build_then_undo_is_identity(q, t):
    g = torch.Generator().manual_seed(q * 100 + t)
    codes = torch.randint(0, 999, (q, t), generator=g)
    grid = build_delay_pattern(codes, PAD, EOS)
    assert grid.shape == (q, delayed_length(t, q)) == (q, t + q + 1)
    assert torch.equal(undo_delay_pattern(grid, t), codes)
    assert frame_count_from_eos(grid, EOS) == t


def test_positions_of_delay_pad_and_eos():
    codes = torch.arange(12).reshape(3, 4)  # Q=3, T=4
    grid = build_delay_pattern(codes, PAD, EOS)
    for i in range(3):
        assert (grid[i, : i + 1] == PAD).all()  # codebook i waits i + 1 steps
        assert torch.equal(grid[i, i + 1 : i + 5], codes[i])
        assert grid[i, i + 5] == EOS
        assert (grid[i, i + 6 :] == PAD).all()
    # frame 0 is complete once the last codebook emitted it: step Q
    assert steps_until_frames(1, 3) == 4
    assert torch.equal(undo_delay_pattern(grid[:, : steps_until_frames(1, 3)]), codes[:, :1])


def test_batched_and_partial_grids():
    codes = torch.randint(0, 50, (2, 4, 9))
    grid = build_delay_pattern(codes, PAD, EOS)
    assert torch.equal(undo_delay_pattern(grid, 9), codes)
    # a prefix of the grid yields exactly the prefix of frames that are complete
    for s in range(grid.shape[-1]):
        n = max(s - 4, 0)
        assert torch.equal(undo_delay_pattern(grid[..., :s], min(n, 9)), codes[..., : min(n, 9)])


def test_undo_refuses_incomplete_frames():
    grid = build_delay_pattern(torch.zeros(3, 5, dtype=torch.long), PAD, EOS)
    with pytest.raises(ValueError, match="complete frames"):
        undo_delay_pattern(grid[:, :5], 3)
