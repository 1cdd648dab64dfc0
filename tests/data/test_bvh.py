import numpy as np
import pytest

from geoattn.data.bvh import (forward_kinematics, load_bvh, load_bvh_h36m17, resample, to_h36m17,
                              y_up_to_z_up)

TWO_BONES = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Knee
  {
    OFFSET 0 -1 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0 -2 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
0 0 0 0 0 0 0 0 0
1 2 3 90 0 0 0 0 90
"""


def test_parse_and_forward_kinematics_by_hand(tmp_path):
    path = tmp_path / "two.bvh"
    path.write_text(TWO_BONES)
    motion = load_bvh(path)
    assert motion.names == ["Hips", "Knee", "Knee_end"]
    assert motion.parents == [-1, 0, 1]
    assert motion.num_frames == 2 and motion.fps == 2.0
    positions = forward_kinematics(motion)
    assert np.allclose(positions[0], [[0, 0, 0], [0, -1, 0], [0, -3, 0]])
    # Frame 1: root moved to (1, 2, 3) and turned 90 deg about Z, so (0, -1, 0) -> (1, 0, 0); the knee then
    # turns 90 deg about its X axis, so the shin (0, -2, 0) -> (0, 0, -2) (unaffected by the root's Z turn).
    assert np.allclose(positions[1], [[1, 2, 3], [2, 2, 3], [2, 2, 1]], atol=1e-12)


def test_parse_errors(tmp_path):
    path = tmp_path / "bad.bvh"
    path.write_text(TWO_BONES.replace("Frames: 2", "Frames: 3"))
    with pytest.raises(ValueError, match="3 frames"):
        load_bvh(path)
    path.write_text(TWO_BONES.replace("HIERARCHY", "HIERARCHIE"))
    with pytest.raises(ValueError, match="HIERARCHY"):
        load_bvh(path)
    with pytest.raises(FileNotFoundError):
        load_bvh(tmp_path / "none.bvh")


def test_mapping_resample_and_axes():
    positions = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    mapped = to_h36m17(positions, ["a", "b", "c"], [("a", "c"), "b"])
    assert np.allclose(mapped[:, 0], (positions[:, 0] + positions[:, 2]) / 2)
    with pytest.raises(ValueError, match="not in the skeleton"):
        to_h36m17(positions, ["a", "b", "c"], ["d"])
    ramp = np.arange(13, dtype=float)[:, None]  # 12 intervals at 120 fps = 0.1 s
    assert np.allclose(resample(ramp, 120, 50)[:, 0], [0, 2.4, 4.8, 7.2, 9.6, 12.0])
    assert np.allclose(y_up_to_z_up(np.array([1.0, 2.0, 3.0])), [1, -3, 2])


def test_cmu_clip_matches_the_shared_h36m17_array(real_data):
    poses = load_bvh_h36m17(real_data / "pose/cmu_131_01_scaled.bvh", fps=50.0)
    reference = np.load(real_data / "pose/cmu_131_01_h36m17.npy")
    assert poses.shape == reference.shape == (415, 17, 3)
    assert np.abs(poses - reference).max() < 1e-5
    motion = load_bvh(real_data / "pose/cmu_131_01_scaled.bvh")
    full = forward_kinematics(motion)
    knee, ankle = motion.names.index("LeftKnee"), motion.names.index("LeftAnkle")
    assert np.linalg.norm(full[:, knee] - full[:, ankle], axis=-1).std() < 1e-9


@pytest.mark.parametrize("edit, message", [
    (lambda t: t[:t.index("MOTION")], r"ends inside the hierarchy.*cut short"),
    (lambda t: t[:-12], r"line 19: expected 2 frames x 9 channels of motion, got 13 values"),
    (lambda t: t.replace("CHANNELS 3", "CHANNELS 3x"), r"line 9: expected a channel count, found '3x'"),
    (lambda t: t.replace("Frame Time: 0.5", "Frame Time: 0"), r"line 18: expected a positive frame time"),
    (lambda t: t.replace("Zrotation Yrotation Xrotation\n    End", "Zrotation Yrotation Qrotation\n    End"),
     r"line 9: unknown channel 'Qrotation' of joint 'Knee'"),
    (lambda t: t.replace("OFFSET 0 -1 0", "OFFSET 0 one 0"), r"line 8: expected an OFFSET value, found 'one'"),
    (lambda t: t.replace("1 2 3 90", "1 2 3 nan"), r"line 20: expected a finite motion value"),
    (lambda t: t.replace("1 2 3 90", "1 2 3 ninety"), r"line 20: expected a motion value, found 'ninety'"),
])
def test_bad_files_name_the_file_and_line(tmp_path, edit, message):
    path = tmp_path / "bad.bvh"
    path.write_text(edit(TWO_BONES))
    with pytest.raises(ValueError, match=message) as info:
        load_bvh(path)
    assert str(path) in str(info.value)


def test_binary_garbage_is_a_value_error(tmp_path):
    path = tmp_path / "garbage.bvh"
    path.write_bytes(b"HIERARCHY\n\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="garbage.bvh: not a BVH text file"):
        load_bvh(path)
