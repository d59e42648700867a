"""HD95 (pooled 95th-percentile surface distance): analytic cases, MedPy equality, 2D-in-3D, errors."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from helpers import brute_force_hd95
from nnunetv2_ciml.evaluation import directed_surface_distances, hd95


def random_blobs(shape, seed, threshold=0.6):
    noise = np.random.default_rng(seed).random(shape)
    smooth = gaussian_filter(noise, 2.0)
    return smooth > np.quantile(smooth, threshold)


def test_identical_masks_give_zero():
    m = np.zeros((10, 11, 12), bool)
    m[2:7, 3:9, 4:8] = True
    assert hd95(m, m, (1.0, 2.0, 3.0)) == 0.0


def test_single_voxels_with_anisotropic_spacing():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2, 2, 2] = True
    b[5, 6, 2] = True
    assert hd95(a, b, (2.0, 0.5, 1.0)) == pytest.approx(np.sqrt((3 * 2.0) ** 2 + (4 * 0.5) ** 2))


def test_parallel_slabs_touching_the_image_border():
    # every surface voxel of one slab is exactly 5 slices from the other slab
    a = np.zeros((12, 8, 9), bool)
    b = np.zeros_like(a)
    a[2] = True
    b[7] = True
    assert hd95(a, b, (2.5, 0.7, 1.3)) == pytest.approx(5 * 2.5)
    d_ab, d_ba = directed_surface_distances(a, b, (2.5, 0.7, 1.3))
    assert d_ab.size == d_ba.size == 8 * 9
    np.testing.assert_allclose(np.concatenate([d_ab, d_ba]), 12.5)


def test_offset_cubes():
    a = np.zeros((20, 20, 24), bool)
    b = np.zeros_like(a)
    a[5:13, 5:13, 5:13] = True
    b[5:13, 5:13, 8:16] = True
    d_ab, d_ba = directed_surface_distances(a, b)
    # the Hausdorff distance is the offset; the part of A's side faces inside B lies on B's side faces
    assert d_ab.max() == d_ba.max() == 3.0
    assert np.count_nonzero(d_ab == 0) > 0
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b, (1, 1, 1)))
    assert hd95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(brute_force_hd95(a, b, (1.0, 1.0, 0.5)))


def test_concentric_spheres_with_anisotropic_spacing():
    spacing = np.array([1.5, 1.0, 0.8])
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip((30, 40, 50), spacing)], indexing="ij"))
    radius = np.sqrt(((grid - grid.reshape(3, -1).mean(1)[:, None, None, None]) ** 2).sum(0))
    inner, outer = radius <= 6.0, radius <= 10.0
    value = hd95(inner, outer, spacing)
    assert 4.0 - 1.5 <= value <= 4.0 + 1.5  # 4 mm up to voxelisation
    assert value == pytest.approx(brute_force_hd95(inner, outer, spacing))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_medpy_and_brute_force(seed):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    a, b = random_blobs((24, 30, 28), seed), random_blobs((24, 30, 28), seed + 10)
    spacing = (2.0, 0.9, 1.1)
    ours = hd95(a, b, spacing)
    assert ours == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=spacing), abs=1e-12)
    assert ours == pytest.approx(brute_force_hd95(a, b, spacing), abs=1e-12)
    assert hd95(b, a, spacing) == ours


def test_small_masks_in_a_large_volume_equal_medpy():
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    a = np.zeros((60, 70, 80), bool)
    b = np.zeros_like(a)
    a[0:6, 30:40, 70:80] = True  # touches two image borders
    b[2:9, 33:45, 66:79] = True
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=(3.0, 1.0, 1.0)))


@pytest.mark.parametrize("singleton_axis", [0, 1])
def test_2d_image_stored_with_a_singleton_axis_uses_in_plane_contours(singleton_axis):
    yy, xx = np.mgrid[:40, :44]
    disk = (yy - 20) ** 2 + (xx - 21) ** 2 <= 81
    square = np.zeros_like(disk)
    square[12:30, 15:33] = True
    spacing_2d = (0.8, 0.5)
    expected = brute_force_hd95(disk, square, spacing_2d)
    a3, b3 = np.expand_dims(disk, singleton_axis), np.expand_dims(square, singleton_axis)
    spacing_3d = list(spacing_2d)
    spacing_3d.insert(singleton_axis, 999.0)  # the spacing of the singleton axis plays no role
    assert hd95(a3, b3, spacing_3d) == pytest.approx(expected)
    assert hd95(disk, square, spacing_2d) == pytest.approx(expected)
    # a naive 3D erosion would make every pixel "surface" and give a different value
    naive = brute_force_hd95(a3, b3, spacing_3d)
    assert naive != pytest.approx(expected)


def test_empty_mask_shape_mismatch_and_bad_spacing_are_value_errors():
    a = np.zeros((5, 5, 5), bool)
    b = np.zeros_like(a)
    b[2, 2, 2] = True
    with pytest.raises(ValueError, match="empty"):
        hd95(a, b)
    with pytest.raises(ValueError, match="empty"):
        hd95(b, a)
    with pytest.raises(ValueError, match="shape"):
        hd95(b, b[:4])
    with pytest.raises(ValueError, match="spacing"):
        hd95(b, b, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(b, b, (1.0, 0.0, 1.0))


def test_a_distance_of_one_voxel_is_the_spacing_to_the_last_bit():
    """Voxels at x = 2 and 3 with 0.8 mm spacing are 0.8 mm apart exactly (as a distance transform gives it),
    not 3 * 0.8 - 2 * 0.8 = 0.8000000000000003: a tolerance of one voxel (NSD) must count them as within."""
    a = np.zeros((1, 1, 6), bool)
    b = np.zeros_like(a)
    a[0, 0, [0, 3]] = True   # the voxel at x = 0 keeps the union's box from shifting the indices
    b[0, 0, 2] = True
    d_ab, d_ba = directed_surface_distances(a, b, (1.0, 1.0, 0.8))
    assert d_ba.tolist() == [0.8] and sorted(d_ab.tolist()) == [0.8, 1.6]
