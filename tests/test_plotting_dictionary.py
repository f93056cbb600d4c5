"""The k-sparse autoencoder figures are drawn and written, and bad inputs are refused clearly."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from fmi_jax import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    assert path.exists()
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(6, 5, 5), (6, 5, 5, 1), (6, 5, 5, 3)])
def test_atom_grid_writes_a_png(tmp_path, rng, shape):
    path = tmp_path / "sub" / "atoms.png"
    fig = plotting.atom_grid(rng.normal(size=shape), path, title="atoms")
    assert isinstance(fig, Figure)
    assert _is_png(path)


def test_atom_grid_honours_order_and_max_atoms(tmp_path, rng):
    atoms = rng.normal(size=(8, 4, 4))
    order = np.array([7, 3, 0, 5])
    fig = plotting.atom_grid(atoms, order=order, max_atoms=3)
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["7", "3", "0"]
    # an all-zero atom (dead latent) must not break the symmetric colour scale
    atoms[2] = 0.0
    plotting.atom_grid(atoms, tmp_path / "b.png", order=np.array([2, 1]))
    assert _is_png(tmp_path / "b.png")


@pytest.mark.parametrize(
    ("order", "match"),
    [
        (np.array([0, 8]), r"\[0, 8\)"),
        (np.array([-1, 2]), r"\[0, 8\)"),
        (np.array([[0, 1]]), "1-D"),
        (np.array([0.0, 1.0]), "integer"),
    ],
)
def test_atom_grid_rejects_bad_order(tmp_path, rng, order, match):
    with pytest.raises(ValueError, match=match):
        plotting.atom_grid(rng.normal(size=(8, 4, 4)), tmp_path / "a.png", order=order)


@pytest.mark.parametrize("shape", [(4, 4), (3, 4, 4, 2), (3, 1, 4, 4, 1)])
def test_atom_grid_rejects_bad_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match=r"got shape"):
        plotting.atom_grid(np.zeros(shape), tmp_path / "a.png")


@pytest.mark.parametrize("shape", [(3, 6, 6), (3, 6, 6, 1), (3, 6, 6, 3)])
def test_reconstructions_writes_a_png(tmp_path, rng, shape):
    originals = rng.uniform(size=shape)
    recon = np.clip(originals + 0.05 * rng.normal(size=shape), 0, 1)
    errors = ((originals - recon) ** 2).reshape(len(originals), -1).mean(1)
    plotting.reconstructions(originals, recon, tmp_path / "r.png", errors=errors, max_images=2)
    assert _is_png(tmp_path / "r.png")


def test_reconstructions_single_image_without_errors(tmp_path, rng):
    x = rng.uniform(size=(1, 6, 6))
    plotting.reconstructions(x, x, tmp_path / "r.png")
    assert _is_png(tmp_path / "r.png")


def test_reconstructions_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="same shape"):
        plotting.reconstructions(np.zeros((3, 6, 6)), np.zeros((3, 6, 5)), tmp_path / "r.png")
    with pytest.raises(ValueError, match="errors must have shape"):
        plotting.reconstructions(
            np.zeros((3, 6, 6)), np.zeros((3, 6, 6)), tmp_path / "r.png", errors=np.zeros(2)
        )


def test_latent_usage_writes_a_png(tmp_path, rng):
    counts = rng.integers(0, 200, size=64)
    counts[:5] = 0  # dead latents
    plotting.latent_usage(counts, tmp_path / "u.png", num_samples=200, k=4)
    assert _is_png(tmp_path / "u.png")


def test_latent_usage_all_dead_and_no_k(tmp_path):
    plotting.latent_usage(np.zeros(16, int), tmp_path / "u.png", num_samples=10)
    assert _is_png(tmp_path / "u.png")


@pytest.mark.parametrize(
    ("counts", "num_samples", "kwargs", "match"),
    [
        (np.array([1, 11, 3]), 10, {}, "<= num_samples"),
        (np.array([1, -1, 3]), 10, {}, "non-negative"),
        (np.array([[1, 2]]), 10, {}, "1-D"),
        (np.array([1, 2]), 0, {}, "num_samples must be > 0"),
        (np.array([1, 2]), 10, {"k": 3}, "k must lie in"),
    ],
)
def test_latent_usage_rejects_bad_input(tmp_path, counts, num_samples, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plotting.latent_usage(counts, tmp_path / "u.png", num_samples=num_samples, **kwargs)
