import numpy as np
import pytest
import torch

from harness import data
from harness.methods.features import extract, weights_hash

to_tensor = data.images.GrayscaleTransform(channels=3)  # a transform the cache can key by what it computes


def own_to_tensor(image):  # a user's function: what it computes cannot be described
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


@pytest.fixture(scope="module")
def subset():
    test = data.fashion_mnist.read("test")
    return test, data.images.balanced_subset(test.labels, 20, seed=0)


def test_cache_is_reused_and_survives_an_interrupted_run(tmp_path, subset):
    test, idx = subset
    proj = torch.randn(3 * 28 * 28, 16)
    calls = []

    def encode(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the second chunk
        return x.flatten(1) @ proj

    kw = dict(model_id="proj", weights="w1", indices=idx, batch_size=50, chunk_size=100, cache_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        extract(encode, test, to_tensor, **kw)
    calls.clear()
    calls.append(0)  # the next run must not be interrupted
    resumed = extract(lambda x: x.flatten(1) @ proj, test, to_tensor, **kw)
    assert (resumed.from_cache, resumed.computed) == (1, 1)
    again = extract(lambda x: 1 / 0, test, to_tensor, **kw)  # everything from the cache: encode is never called
    assert (again.from_cache, again.computed) == (2, 0)
    np.testing.assert_array_equal(again.features, resumed.features)
    np.testing.assert_array_equal(again.indices, idx)
    fresh = extract(lambda x: x.flatten(1) @ proj, test, to_tensor, **{**kw, "cache_dir": None})
    np.testing.assert_allclose(fresh.features, resumed.features, rtol=1e-6)
    other = extract(lambda x: x.flatten(1) @ proj, test, to_tensor, **{**kw, "weights": "w2"})
    assert other.computed == 2  # other weights, other cache entry


def test_a_transform_that_cannot_be_described_is_never_cached(tmp_path, subset):
    """A user's function (or a torchvision Lambda) may compute anything: nothing keyed by it is written or read."""
    from torchvision import transforms as T

    test, idx = subset
    kw = dict(model_id="pixels", weights="w", indices=idx, batch_size=50, chunk_size=100, cache_dir=tmp_path)
    for transform in (own_to_tensor, T.Compose([T.Lambda(lambda im: im), T.ToTensor()])):
        first = extract(lambda x: x.flatten(1), test, transform, **kw)
        second = extract(lambda x: x.flatten(1), test, transform, **kw)
        assert first.computed == second.computed == 2 and second.from_cache == 0
    assert not (tmp_path / "features").exists()


def test_weights_hash_tracks_the_weights():
    a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    assert weights_hash(a) != weights_hash(b)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
