"""The sharded sampler's arithmetic and its errors, against the mutants of
graphnet/distributed/sampler.py that survived the suite (issue 25)."""
from __future__ import annotations

import pytest

import graphnet as gn
from graphnet.distributed import ShardedSampler, shard_bounds


@pytest.mark.parametrize("n, batch, size, batches", [
    (0, 4, 2, 0), (1, 4, 2, 1), (8, 4, 2, 1), (9, 4, 2, 2), (10, 4, 1, 3), (103, 8, 2, 7)])
def test_an_epoch_has_its_global_batches_rounded_up(n, batch, size, batches):
    """A last, short global batch still counts: an epoch's every sample is taken once."""
    assert ShardedSampler(batch, 0, size).batches(n) == batches


@pytest.mark.parametrize("args, error, message", [
    ((4, 0, 2.5), gn.ArgumentTypeError, "size must be an integer, got float 2.5"),
    ((4, 0, "2"), gn.ArgumentTypeError, "size must be an integer, got '2'"),
    ((4, 1.0, 2), gn.ArgumentTypeError, "rank must be an integer, got float 1.0"),
    ((4.0, 0, 2), gn.ArgumentTypeError, "n must be an integer, got float 4.0"),
    ((-1, 0, 2), ValueError, "n must be >= 0, got -1"),
    ((4, 0, -1), ValueError, "rank must be in [0, size) with size > 0, got rank=0, size=-1"),
])
def test_shard_bounds_names_the_bad_argument(args, error, message):
    with pytest.raises(error) as info:
        shard_bounds(*args)
    assert str(info.value) == message


@pytest.mark.parametrize("rank, size", [(0, 0), (1, 1), (-1, 2)])
def test_a_sampler_for_a_rank_outside_the_world_is_refused(rank, size):
    with pytest.raises(ValueError, match=rf"^rank must be in \[0, size\) with size > 0, got "
                                         rf"rank={rank}, size={size}$"):
        ShardedSampler(2, rank, size)
