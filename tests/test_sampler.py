import numpy as np
import pytest

from data_pipeline.sampler import PKSampler, make_sampler, process_share


def unequal_labels(seed=0, ids=12):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(ids), rng.integers(1, 9, ids))  # 1..8 images per identity
    return rng.permutation(labels)


def test_batches_hold_p_distinct_identities_with_k_images_each():
    labels = unequal_labels()
    sampler = PKSampler(labels, p=4, k=3, seed=0)
    assert sampler.steps_per_epoch == len(labels) // 12
    for epoch in range(3):
        for batch in sampler.epoch(epoch):
            groups = labels[batch].reshape(4, 3)
            assert (groups == groups[:, :1]).all()  # K images of one identity per group
            assert len(set(groups[:, 0])) == 4  # P distinct identities


def test_images_repeat_only_when_an_identity_has_fewer_than_k():
    labels = unequal_labels()
    counts = np.bincount(labels)
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    for batch in sampler.epoch(0):
        for group in batch.reshape(4, 3):
            ident = labels[group[0]]
            assert len(set(group)) == min(3, counts[ident])


def test_an_identitys_images_are_all_used_before_any_repeats():
    labels = np.repeat(np.arange(4), 6)
    sampler = PKSampler(labels, p=2, k=2, seed=0)
    served = {i: [] for i in range(4)}
    for batch in sampler.epoch(0):
        for group in batch.reshape(2, 2):
            served[labels[group[0]]].extend(group)
    for images in served.values():
        first = images[:6]
        assert len(set(first)) == len(first)


def test_deterministic_per_seed_and_epoch_and_stateless_across_steps():
    labels = unequal_labels()
    a, b = PKSampler(labels, 4, 3, seed=7), PKSampler(labels, 4, 3, seed=7)
    np.testing.assert_array_equal(a.epoch(2), b.epoch(2))
    assert not np.array_equal(a.epoch(0), a.epoch(1))
    assert not np.array_equal(a.epoch(0), PKSampler(labels, 4, 3, seed=8).epoch(0))
    spe = a.steps_per_epoch
    np.testing.assert_array_equal(b.batch(spe + 1), a.epoch(1)[1])  # no state carried over


def test_process_shares_tile_every_global_batch():
    sampler = PKSampler(unequal_labels(), p=4, k=2, seed=0)
    for step in range(sampler.steps_per_epoch):
        batch = sampler.batch(step)
        shares = [process_share(batch, i, 4) for i in range(4)]
        np.testing.assert_array_equal(np.concatenate(shares), batch)
    with pytest.raises(ValueError, match="does not split"):
        process_share(np.arange(8), 0, 3)


def test_too_few_identities_is_explained():
    with pytest.raises(ValueError, match="only 3"):
        PKSampler(np.repeat(np.arange(3), 4), p=4, k=2)


def test_identity_sampler_uses_each_identitys_images_in_k_chunks_in_proportion():
    """BoT's sampler: identities appear in proportion to their images and an epoch covers the
    training set; the uniform sampler draws identities evenly whatever their image count."""
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.concatenate([np.repeat(np.arange(10), 4),          # 1 chunk
                                             np.repeat(np.arange(10, 20), 16)]))  # 4 chunks
    identity = make_sampler("identity", labels, p=4, k=4, seed=0)
    uniform = make_sampler("uniform", labels, p=4, k=4, seed=0)
    assert identity.steps_per_epoch == (10 * 1 + 10 * 4) // 4
    for sampler, low, high in ((identity, 3.0, 5.0), (uniform, 0.6, 1.6)):
        batches = np.concatenate([sampler.epoch(e) for e in range(4)])
        groups = labels[batches].reshape(len(batches), 4, 4)
        assert (groups == groups[:, :, :1]).all() and all(
            len(set(g[:, 0])) == 4 for g in groups)
        seen = np.bincount(groups[:, :, 0].ravel(), minlength=20)
        ratio = seen[10:].mean() / seen[:10].mean()  # 4x the images
        assert low < ratio < high, (sampler, ratio)
    epoch = identity.epoch(0)
    assert len(np.unique(epoch)) >= 0.9 * len(labels)  # the epoch covers the training set
    assert len(np.unique(uniform.epoch(0))) < 0.8 * len(labels)


def test_identity_sampler_is_a_pure_function_of_seed_and_epoch():
    labels = unequal_labels()  # some identities have fewer than K images
    a, b = (make_sampler("identity", labels, p=4, k=3, seed=5) for _ in range(2))
    np.testing.assert_array_equal(a.epoch(2), b.epoch(2))
    np.testing.assert_array_equal(a.batch(2 * a.steps_per_epoch + 1), b.epoch(2)[1])
    assert not np.array_equal(a.epoch(0), a.epoch(1))
    with pytest.raises(ValueError, match="input.sampler"):
        make_sampler("random", labels, p=4, k=3)
    with pytest.raises(ValueError, match=r"config input\.p"):
        make_sampler("identity", labels, p=99, k=3)
