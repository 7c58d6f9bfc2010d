import torch

from model_export.detection.anchors import cell_anchors, grid_anchors


def test_cell_anchors_hand_values():
    a = cell_anchors(8, scales=(1.0, 2.0), ratios=(1.0, 4.0))
    expected = torch.tensor(
        [
            [-4.0, -4.0, 4.0, 4.0],  # ratio 1, side 8
            [-8.0, -8.0, 8.0, 8.0],  # ratio 1, side 16
            [-2.0, -8.0, 2.0, 8.0],  # ratio 4 (h/w): w = 8/2, h = 8*2
            [-4.0, -16.0, 4.0, 16.0],  # ratio 4, side 16
        ]
    )
    assert torch.allclose(a, expected)


def test_paper_anchor_set_has_nine_shapes_of_equal_area_per_scale():
    a = cell_anchors(16, scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), ratios=(0.5, 1.0, 2.0))
    assert a.shape == (9, 4)
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    assert torch.allclose(area[:3], torch.tensor([256.0, 256 * 2 ** (2 / 3), 256 * 2 ** (4 / 3)]))
    assert torch.allclose(area[:3], area[3:6]) and torch.allclose(area[3:6], area[6:])


def test_grid_anchors_hand_values_and_order():
    a = grid_anchors(2, 3, stride=4, size=8, scales=(1.0,), ratios=(1.0,))
    expected = torch.tensor(
        [
            [-2.0, -2.0, 6.0, 6.0],  # row 0, col 0: centre (2, 2)
            [2.0, -2.0, 10.0, 6.0],  # row 0, col 1: centre (6, 2)
            [6.0, -2.0, 14.0, 6.0],  # row 0, col 2: centre (10, 2)
            [-2.0, 2.0, 6.0, 10.0],  # row 1, col 0: centre (2, 6)
            [2.0, 2.0, 10.0, 10.0],
            [6.0, 2.0, 14.0, 10.0],
        ]
    )
    assert torch.equal(a, expected)
    two = grid_anchors(1, 2, stride=2, size=2, scales=(1.0, 2.0), ratios=(1.0,))
    # position-major, then anchor: (col 0, side 2), (col 0, side 4), (col 1, side 2), (col 1, side 4)
    assert torch.equal(two, torch.tensor([[0.0, 0, 2, 2], [-1, -1, 3, 3], [2, 0, 4, 2], [1, -1, 5, 3]]))
