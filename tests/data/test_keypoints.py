import numpy as np
import pytest
import torch

from geoattn.data.keypoints import coco_to_h36m17


def test_coco_to_h36m17_by_hand():
    coco = np.zeros((17, 3))
    coco[:, 0] = np.arange(17)  # x = COCO index
    coco[:, 1] = 2 * np.arange(17)
    coco[:, 2] = np.linspace(0.2, 1.0, 17)
    h36m = coco_to_h36m17(coco)
    assert h36m.shape == (17, 3)
    expected_x = [11.5, 12, 14, 16, 11, 13, 15, 8.5, 5.5, 0, 1.5, 5, 7, 9, 6, 8, 10]
    assert np.allclose(h36m[:, 0], expected_x)
    assert np.allclose(h36m[:, 1], 2 * np.array(expected_x))
    assert np.isclose(h36m[0, 2], coco[11, 2])  # pelvis confidence = the weaker hip
    assert np.isclose(h36m[7, 2], coco[5, 2])  # spine: weakest of hips and shoulders


def test_coco_to_h36m17_torch_batch_and_errors():
    coco = torch.randn(4, 5, 17, 2)
    out = coco_to_h36m17(coco)
    assert out.shape == (4, 5, 17, 2) and torch.equal(out[..., 1, :], coco[..., 12, :])
    with pytest.raises(ValueError, match="COCO-17"):
        coco_to_h36m17(np.zeros((16, 2)))
