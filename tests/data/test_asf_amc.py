"""geoattn.data.asf_amc: forward kinematics on hand-checked skeletons, the CMU clips' conventions, errors."""
from __future__ import annotations

import numpy as np
import pytest

from geoattn.data import load_asf_amc
from geoattn.data.asf_amc import CMU_ASF_TO_H36M17, asf_amc_forward_kinematics, load_amc, load_asf

ASF = """# test skeleton
:version 1.10
:name test
:units
  mass 1.0
  length {unit}
  angle deg
:root
   order {order}
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name a
     direction 0 1 0
     length 2
     axis 0 0 0 XYZ
    dof rz
  end
  begin
     id 2
     name b
     direction 1 0 0
     length 1
     axis 0 0 90 XYZ
    dof rx
  end
:hierarchy
  begin
    root a
    a b
  end
"""


def write_pair(tmp_path, frames, unit="1", order="TX TY TZ RX RY RZ"):
    asf, amc = tmp_path / "t.asf", tmp_path / "t.amc"
    asf.write_text(ASF.format(unit=unit, order=order))
    body = [":FULLY-SPECIFIED", ":DEGREES"]
    for index, (root, a, b) in enumerate(frames, start=1):
        body += [str(index), "root " + " ".join(map(str, root)), f"a {a}", f"b {b}"]
    amc.write_text("\n".join(body) + "\n")
    return asf, amc


def test_forward_kinematics_by_hand(tmp_path):
    """Bone a (up, length 2) turns about z; bone b (along x) has its frame turned 90 degrees about z, so
    its rx dof turns it about the world y axis; lengths are in 0.0254 / unit metres."""
    asf, amc = write_pair(tmp_path, [([0, 0, 0, 0, 0, 0], 0, 0), ([1, 0, 0, 0, 0, 0], 90, 0),
                                     ([0, 0, 0, 0, 0, 0], 0, 90), ([0, 0, 0, 0, 90, 0], 0, 0)])
    skeleton = load_asf(asf)
    assert skeleton.names == ["root", "a", "b"] and skeleton.parents == [-1, 0, 1]
    assert skeleton.metres_per_unit == pytest.approx(0.0254)
    positions = asf_amc_forward_kinematics(skeleton, load_amc(amc, skeleton)) / 0.0254
    expected = np.array([
        [[0, 0, 0], [0, 2, 0], [1, 2, 0]],     # rest pose
        [[1, 0, 0], [-1, 0, 0], [-1, 1, 0]],   # root moved by x = 1, a turned 90 degrees about z
        [[0, 0, 0], [0, 2, 0], [0, 2, -1]],    # b turned 90 degrees about its frame's x = the world y
        [[0, 0, 0], [0, 2, 0], [0, 2, -1]],    # the root turned 90 degrees about y
    ])
    np.testing.assert_allclose(positions, expected, atol=1e-9)


def test_root_channel_order_and_length_unit(tmp_path):
    asf, amc = write_pair(tmp_path, [([0, 90, 0, 3, 0, 0], 0, 0)], unit="0.5", order="RX RY RZ TX TY TZ")
    skeleton = load_asf(asf)
    assert skeleton.dofs[0] == ["RX", "RY", "RZ", "TX", "TY", "TZ"]
    positions = asf_amc_forward_kinematics(skeleton, load_amc(amc, skeleton)) / skeleton.metres_per_unit
    assert skeleton.metres_per_unit == pytest.approx(0.0508)
    np.testing.assert_allclose(positions[0], [[3, 0, 0], [3, 2, 0], [3, 2, -1]], atol=1e-9)


def test_errors_name_the_file_and_line(tmp_path):
    asf, amc = write_pair(tmp_path, [([0, 0, 0, 0, 0, 0], 0, 0), ([0, 0, 0, 0, 0, 0], 0, 0)])
    skeleton = load_asf(asf)
    amc.write_text(amc.read_text().replace("a 0\nb 0\n2", "a zero\nb 0\n2"))
    with pytest.raises(ValueError, match=r"t\.amc: line 5: expected 1 numbers for 'a', found 'zero'"):
        load_amc(amc, skeleton)
    amc.write_text(":DEGREES\n1\nroot 0 0 0 0 0 0\na 0\nb 0\nc 1\n")
    with pytest.raises(ValueError, match=r"t\.amc: line 6: bone 'c' is not in the skeleton"):
        load_amc(amc, skeleton)
    amc.write_text(":DEGREES\n1\nroot 0 0 0 0 0 0\na 0\nb 0\n2\nroot 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"t\.amc: line 6: the frame lacks bones \['a', 'b'\]"):
        load_amc(amc, skeleton)
    amc.write_text(":DEGREES\n1\nroot 0 0 0 0 0 0\na 0 1\nb 0\n")
    with pytest.raises(ValueError, match=r"line 4: expected 1 values for 'a', found 2"):
        load_amc(amc, skeleton)
    asf.write_text(asf.read_text().replace("dof rz", "dof l"))
    with pytest.raises(ValueError, match=r"t\.asf: line \d+: expected rotational dofs"):
        load_asf(asf)
    asf.write_text(ASF.format(unit="1", order="TX TY TZ RX RY RZ").replace("a b\n", "a b z\n"))
    with pytest.raises(ValueError, match=r"t\.asf: the hierarchy names bone 'z'"):
        load_asf(asf)
    with pytest.raises(FileNotFoundError, match="missing.asf"):
        load_asf(tmp_path / "missing.asf")
    (tmp_path / "binary.amc").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"binary\.amc: not an AMC text file"):
        load_amc(tmp_path / "binary.amc", skeleton)


def _cmu(real_data):
    root = real_data / "pose" / "cmu_asfamc"
    if not (root / "02" / "02.asf").is_file():
        pytest.skip("CMU ASF/AMC fixture missing")
    return root


def test_cmu_clip_has_constant_bone_lengths(real_data):
    root = _cmu(real_data)
    skeleton = load_asf(root / "02" / "02.asf")
    positions = asf_amc_forward_kinematics(skeleton, load_amc(root / "02" / "02_02.amc", skeleton))
    assert positions.shape == (298, len(skeleton.names), 3)
    for bone, parent in enumerate(skeleton.parents):
        if parent < 0:
            continue
        lengths = np.linalg.norm(positions[:, bone] - positions[:, parent], axis=-1)
        expected = skeleton.lengths[bone] * skeleton.metres_per_unit
        np.testing.assert_allclose(lengths, expected, rtol=1e-9, err_msg=skeleton.names[bone])
    assert {name for entry in CMU_ASF_TO_H36M17 for name in ((entry,) if isinstance(entry, str) else entry)} \
        <= set(skeleton.names)


def test_cmu_clip_follows_the_bvh_clip_conventions(real_data):
    """Metres, +Z up, 50 fps, the H36M-17 layout with left and right as in the BVH clip."""
    from geoattn.data.bvh import load_bvh_h36m17

    root = _cmu(real_data)
    pose = load_asf_amc(root / "02" / "02.asf", root / "02" / "02_02.amc")
    assert pose.dtype == np.float32 and pose.shape == (int((298 - 1) / 120 * 50) + 1, 17, 3)
    head_height = pose[:, 10, 2] - pose[:, [3, 6], 2].mean(1)
    assert (head_height > 1.2).all() and (head_height < 2.1).all()  # an upright adult, in metres, Z up
    femur = np.linalg.norm(pose[:, 2] - pose[:, 1], axis=-1)
    assert 0.3 < femur.mean() < 0.55 and femur.std() < 1e-3  # resampling keeps lengths nearly constant
    bvh = load_bvh_h36m17(real_data / "pose" / "cmu_131_01_scaled.bvh")

    def chirality(x):  # (left hip - right hip) x (thorax - pelvis) points where the head looks, on average
        facing = np.cross(x[:, 4] - x[:, 1], x[:, 8] - x[:, 0])
        return np.sign(np.sum(facing * (x[:, 10] - x[:, 9]), -1).mean())

    assert chirality(pose) == chirality(bvh)
    native = load_asf_amc(root / "02" / "02.asf", root / "02" / "02_02.amc", fps=None, up="y")
    assert native.shape[0] == 298 and (native[:, 10, 1] > native[:, 3, 1]).all()  # CMU files are Y up
