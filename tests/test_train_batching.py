"""The trainer's batch order: seeded per epoch, every example once, grouped by length on request."""
import statistics

from deeptalk.training.batching import epoch_order


def padded_positions(order, lengths, batch):
    return sum(batch * max(lengths[i] for i in order[k: k + batch]) for k in range(0, len(order), batch))


def test_each_epoch_sees_every_example_once_in_a_seeded_order():
    lengths = [(7 * i) % 53 + 5 for i in range(230)]
    for grouped in (False, True):
        a = epoch_order(lengths, 4, seed=3, epoch=1, group_by_length=grouped)
        assert sorted(a) == list(range(230))
        assert a == epoch_order(lengths, 4, seed=3, epoch=1, group_by_length=grouped)
        assert a != epoch_order(lengths, 4, seed=3, epoch=2, group_by_length=grouped)


def test_grouping_by_length_cuts_padding_and_keeps_the_epochs_mix():
    lengths = [(37 * i) % 200 + 20 for i in range(1000)]
    plain = epoch_order(lengths, 4, seed=0, epoch=0, group_by_length=False)
    grouped = epoch_order(lengths, 4, seed=0, epoch=0, group_by_length=True)
    real = sum(lengths)
    assert padded_positions(grouped, lengths, 4) < 1.05 * real < padded_positions(plain, lengths, 4)
    # grouping sorts within mega-batches only: the epoch's first and last fifths still
    # hold long and short examples alike
    firsts, lasts = grouped[:200], grouped[-200:]
    assert abs(statistics.mean(lengths[i] for i in firsts) - statistics.mean(lengths[i] for i in lasts)) < 20


def test_fewer_examples_than_a_batch_repeat_to_fill_it():
    order = epoch_order([3, 5], 4, seed=0, epoch=0, group_by_length=True)
    assert len(order) == 4 and set(order) == {0, 1}
