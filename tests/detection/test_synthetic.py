import math

import numpy as np
import pytest
import torch

from geoattn.data.kitti import (boxes_camera_to_lidar, load_kitti_frame, read_calib, read_image_set, read_label,
                                read_velodyne)
from geoattn.detection.synthetic import (CLASS_NAMES, HDL64, IMAGE_HW, MIN_POINTS, Primitive, SceneLayout,
                                         SensorModel, _intersect, beam_directions, frame_seed, generate_scene,
                                         kitti_calibration, make_object, render_layout, write_synthetic_kitti)
from geoattn.sparse.boxes import points_in_boxes


@pytest.fixture(scope="module")
def frames():
    return [generate_scene(seed) for seed in (0, 1, 2)]


def test_determinism_and_seed_independence(frames):
    again = generate_scene(0)
    assert torch.equal(again.points, frames[0].points)
    assert torch.equal(again.image, frames[0].image)
    assert again.labels.names == frames[0].labels.names
    assert torch.equal(again.labels.boxes_camera, frames[0].labels.boxes_camera)
    other = frames[1]
    assert frames[0].points.shape != other.points.shape or not torch.equal(frames[0].points, other.points)
    boxes0 = np.stack([o.box for o in frames[0].layout.objects])
    boxes1 = np.stack([o.box for o in other.layout.objects])
    assert boxes0.shape != boxes1.shape or not np.allclose(boxes0, boxes1)
    # frame seeds: distinct across indices and folder seeds, reproducible
    seeds = {frame_seed(s, i) for s in range(4) for i in range(50)}
    assert len(seeds) == 200 and frame_seed(3, 7) == frame_seed(3, 7)
    assert all(0 <= s < 2**63 for s in seeds)


def test_points_and_beam_pattern(frames):
    for frame in frames:
        points = frame.points
        assert points.dtype == torch.float32 and points.shape[1] == 4
        assert 80_000 < points.shape[0] < 140_000
        xyz = points[:, :3].double()
        elevation = torch.rad2deg(torch.atan2(xyz[:, 2], xyz[:, :2].norm(dim=1)))
        assert elevation.max() <= 2.0 + 1e-3 and elevation.min() >= -24.9 - 1e-3
        rings = torch.unique(torch.round(elevation * 100))
        assert len(rings) == 64  # every beam returns something (buildings, poles or trees above the horizon)
        rng = xyz.norm(dim=1)
        assert rng.max() <= HDL64.max_range + 0.2 and rng.min() >= HDL64.min_range - 0.2
        assert 0 <= points[:, 3].min() and points[:, 3].max() <= 1
        # ground near z = -1.73: the lowest beam's returns close to the sensor
        near = (rng < 6) & (elevation < -20)
        assert abs(float(xyz[near, 2].median()) + 1.73) < 0.15
    azimuth = torch.atan2(frames[0].points[:, 1], frames[0].points[:, 0])
    step = 2 * math.pi / HDL64.azimuth_steps
    assert math.isclose(math.degrees(step), 0.17, abs_tol=0.001)
    # returns lie on the azimuth grid: (a + pi) / step - 0.5 is (close to) an integer
    frac = ((azimuth.double() + math.pi) / step - 0.5) % 1
    assert float(torch.minimum(frac, 1 - frac).max()) < 1e-3


def test_beam_directions():
    directions = beam_directions(HDL64)
    assert directions.shape == (64, 2118, 3)
    assert np.allclose(np.linalg.norm(directions, axis=-1), 1)
    elevations = np.degrees(np.arcsin(directions[:, 0, 2]))
    assert np.isclose(elevations[0], 2.0) and np.isclose(elevations[-1], -24.9)
    with pytest.raises(ValueError, match="elevations_deg"):
        SensorModel(elevations_deg=(1.0, 2.0))


def test_primitive_intersections_against_reference():
    origin = np.array([0.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    directions = np.array([3.0, 1.0, 0.5]) + rng.normal(size=(600, 3)) * 1.2  # aimed at the solid
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))
    for kind in ("box", "cylinder", "ellipsoid"):
        prim = Primitive(kind, np.array([3.0, 1.0, 0.5]), np.array([1.0, 0.6, 0.8]) if kind != "cylinder"
                         else np.array([0.7, 0.7, 0.9]), rotation)
        t, normal = _intersect(prim, origin, directions, want_normal=True)
        # reference: march along each ray in 2 mm steps, first step inside the solid
        steps = np.arange(0, 6, 0.002)
        local = ((steps[None, :, None] * directions[:, None, :]) - prim.centre) @ rotation
        if kind == "box":
            inside = (np.abs(local) <= prim.half).all(-1)
        elif kind == "cylinder":
            inside = (local[..., 0] ** 2 + local[..., 1] ** 2 <= 0.49) & (np.abs(local[..., 2]) <= 0.9)
        else:
            inside = ((local / prim.half) ** 2).sum(-1) <= 1
        hit = inside.any(1)
        first = np.where(hit, steps[inside.argmax(1)], np.inf)
        assert np.array_equal(np.isfinite(t), hit) or np.mean(np.isfinite(t) != hit) < 0.01, kind
        both = hit & np.isfinite(t)
        assert both.sum() > 100
        assert np.abs(t[both] - first[both]).max() < 0.0025, kind
        # normals point back towards the ray origin
        assert (np.einsum("ij,ij->i", normal[both], directions[both]) < 1e-9).all(), kind


def test_labels_round_trip_and_points_in_boxes(frames, tmp_path):
    calib = kitti_calibration()
    for index, frame in enumerate(frames):
        labels = frame.labels
        named = [i for i, n in enumerate(labels.names) if n != "DontCare"]
        assert all(n in CLASS_NAMES for n in (labels.names[i] for i in named))
        assert labels.names[len(named):] == ["DontCare"] * (len(labels) - len(named))  # DontCare rows last
        boxes = boxes_camera_to_lidar(labels.boxes_camera[named], calib.lidar2cam)
        assert torch.allclose(boxes, frame.boxes_lidar, atol=1e-6)
        # the written file reads back to the same boxes at KITTI's 2 decimals
        from geoattn.data.kitti import write_label
        back = read_label(write_label(tmp_path / f"{index}.txt", labels))
        assert back.names == labels.names
        assert torch.allclose(boxes_camera_to_lidar(back.boxes_camera[named], calib.lidar2cam), boxes, atol=0.02)
        # most points of each labelled object lie inside its 3-D box
        objects = frame.label_object[: len(named)]
        inside = points_in_boxes(frame.points[:, :3].double(), frame.boxes_lidar)
        for row, k in enumerate(objects.tolist()):
            own = frame.point_object == k
            assert own.sum() >= MIN_POINTS
            assert inside[own, row].double().mean() >= 0.9, (index, row)
        assert torch.equal(labels.num_lidar_pts[: len(named)],
                           torch.stack([(frame.point_object == k).sum() for k in objects.tolist()])
                           if named else torch.zeros(0, dtype=torch.long))
        # 2-D boxes in the image, truncation in [0, 1], occlusion levels, alpha consistent with ry
        bbox = labels.bbox
        assert (bbox[:, 0] >= 0).all() and (bbox[:, 2] <= IMAGE_HW[1] - 1).all()
        assert (bbox[:, 1] >= 0).all() and (bbox[:, 3] <= IMAGE_HW[0] - 1).all()
        assert (bbox[:, 2] > bbox[:, 0]).all() and (bbox[:, 3] > bbox[:, 1]).all()
        cam = labels.boxes_camera[named]
        assert ((labels.truncated[named] >= 0) & (labels.truncated[named] <= 1)).all()
        assert set(labels.occluded[named].tolist()) <= {0, 1, 2}
        alpha = cam[:, 6] - torch.atan2(cam[:, 0], cam[:, 2])
        assert torch.allclose(torch.remainder(alpha - labels.alpha[named] + math.pi, 2 * math.pi), 
                              torch.full_like(alpha, math.pi), atol=1e-9)


def test_object_statistics(frames):
    names = [o.name for f in frames for o in f.layout.objects]
    assert names.count("Car") >= 9
    for frame in frames:
        for obj in frame.layout.objects:
            x, y, z, dx, dy, dz, _ = obj.box
            ground = frame.layout.ground_z(x, y)
            assert abs(z - dz / 2 - ground) < 1e-9  # standing on the ground
            assert 3.0 < math.hypot(x, y) < 100
        dims = {n: np.stack([o.box[3:6] for o in frame.layout.objects if o.name == n]) for n in CLASS_NAMES
                if any(o.name == n for o in frame.layout.objects)}
        if "Car" in dims:
            assert np.all(np.abs(dims["Car"].mean(0) - [3.88, 1.63, 1.53]) < [0.6, 0.2, 0.2])


def _car(x, y, heading=0.0, seed=0):
    return make_object("Car", [x, y, -1.73 + 0.75, 3.9, 1.6, 1.5, heading], np.random.default_rng(seed))


def test_occlusion_truncation_and_dontcare_constructed():
    front, behind = _car(10.0, 0.0), _car(16.0, 0.3, seed=1)
    side = _car(12.0, 6.0, seed=2)
    edge = _car(6.0, 5.4, math.pi / 2, seed=3)   # near the left image border
    far = _car(80.0, 2.0, seed=4)
    layout = SceneLayout(objects=[front, behind, side, edge, far])
    frame = render_layout(layout, seed=0, render_image=False)
    rows = dict(zip(frame.label_object.tolist(), range(len(frame.labels))))
    labels = frame.labels
    assert labels.names[rows[0]] == "Car" and labels.occluded[rows[0]] == 0
    assert labels.names[rows[1]] == "Car" and labels.occluded[rows[1]] == 2  # hidden behind the front car
    assert frame.visible_fraction[1] < 0.4 < 0.8 <= frame.visible_fraction[0]
    assert labels.occluded[rows[2]] == 0 and labels.truncated[rows[2]] == 0
    assert labels.truncated[rows[3]] > 0.1  # leaves the image on the left
    assert labels.truncated[rows[3]] < 1
    assert labels.names[rows[4]] == "DontCare"  # beyond 70 m
    assert labels.boxes_camera[rows[4]].tolist() == [-1000, -1000, -1000, -1, -1, -1, -10]
    # an object behind the camera is not labelled at all
    layout = SceneLayout(objects=[_car(-10.0, 0.0)])
    assert len(render_layout(layout, render_image=False).labels) == 0
    # a pedestrian with a handful of points is DontCare
    ped = make_object("Pedestrian", [60.0, 0.0, -1.73 + 0.85, 0.8, 0.6, 1.7, 0.0], np.random.default_rng(0))
    frame = render_layout(SceneLayout(objects=[ped]), render_image=False)
    assert frame.labels.names == (["DontCare"] if frame.labels.num_lidar_pts[0] < MIN_POINTS else ["Pedestrian"])


def test_parts_inside_their_box():
    rng = np.random.default_rng(0)
    for name, size in (("Car", (4.5, 1.8, 1.7)), ("Pedestrian", (0.6, 0.5, 1.5)), ("Cyclist", (1.5, 0.5, 1.6))):
        for heading in (0.0, 1.0, -2.5):
            obj = make_object(name, [5.0, -3.0, 0.2, *size, heading], rng)
            frame = render_layout(SceneLayout(ground=(-5.0, 0.0, 0.0), objects=[obj]), render_image=False)
            own = frame.point_object == 0
            box = torch.tensor(obj.box).reshape(1, 7)
            inside = points_in_boxes(frame.points[own, :3].double(), box, margin=0.06)[:, 0]
            assert own.sum() > 50 and inside.all(), (name, heading)
    with pytest.raises(ValueError, match="name"):
        make_object("Truck", [0, 0, 0, 1, 1, 1, 0], rng)


def test_image_and_calibration(frames):
    image = frames[0].image
    assert image.shape == IMAGE_HW + (3,) and image.dtype == torch.uint8
    assert image.float().std() > 10  # not blank
    calib = frames[0].calib
    assert torch.allclose(calib.P[2][:3, :3], torch.tensor([[707.0493, 0, 604.0814], [0, 707.0493, 180.5066],
                                                            [0, 0, 1.0]], dtype=torch.float64))


def test_write_synthetic_kitti_layout_and_bytes(tmp_path):
    out = tmp_path / "kitti"
    summary = write_synthetic_kitti(out, 3, seed=5, val_fraction=1 / 3, progress=False)
    assert summary["train"] == 2 and summary["val"] == 1
    assert read_image_set(out, "train") == ["000000", "000001"]
    assert read_image_set(out, "val") == ["000002"]
    assert read_image_set(out, "trainval") == ["000000", "000001", "000002"]
    frame = load_kitti_frame(out, "000001")
    direct = generate_scene(frame_seed(5, 1))
    assert torch.equal(frame.points, direct.points)
    assert frame.image_hw == IMAGE_HW and torch.equal(frame.image, direct.image)
    named = [n for n in direct.labels.names if n != "DontCare"]
    assert frame.labels == named
    assert torch.allclose(frame.boxes, direct.boxes_lidar, atol=0.02)
    assert torch.equal(read_calib(out / "training" / "calib" / "000001.txt").P, direct.calib.P)
    assert read_velodyne(out / "training" / "velodyne" / "000000.bin").shape[1] == 4
    # identical bytes from a second folder; a different seed differs
    again = tmp_path / "again"
    write_synthetic_kitti(again, 3, seed=5, val_fraction=1 / 3, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == 3 * 4 + 3 + 1
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    write_synthetic_kitti(other, 1, seed=6, progress=False)
    assert (other / "training/velodyne/000000.bin").read_bytes() != (out / "training/velodyne/000000.bin").read_bytes()


def test_write_synthetic_kitti_refuses_foreign_folders(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic KITTI folder"):
        write_synthetic_kitti(user, 1, progress=False)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_synthetic_kitti(afile, 1, progress=False)
    # a previous synthetic folder: same arguments -> left alone; other arguments -> regenerated, stale frames gone
    out = tmp_path / "synthetic"
    write_synthetic_kitti(out, 2, seed=1, progress=False)
    stamp = (out / "training/velodyne/000000.bin").stat().st_mtime_ns
    assert write_synthetic_kitti(out, 2, seed=1, progress=False)["skipped"]
    assert (out / "training/velodyne/000000.bin").stat().st_mtime_ns == stamp
    write_synthetic_kitti(out, 1, seed=2, progress=False)
    assert sorted(p.name for p in (out / "training/velodyne").iterdir()) == ["000000.bin"]
    assert read_image_set(out, "trainval") == ["000000"]
    # a GT database made from the old frames is stale: removed on regeneration
    (out / "gt_database").mkdir()
    (out / "gt_database" / "000000_Car_0.bin").write_bytes(b"")
    (out / "kitti_dbinfos_train.pkl").write_bytes(b"")
    write_synthetic_kitti(out, 1, seed=3, progress=False)
    assert not (out / "gt_database").exists() and not (out / "kitti_dbinfos_train.pkl").exists()
    # ... but files of the user's make it refuse, and stay
    (out / "gt_database").mkdir()
    (out / "gt_database" / "mine.txt").write_text("mine")
    (out / "training" / "velodyne" / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match="gt_database/mine.txt|gt_database"):
        write_synthetic_kitti(out, 1, seed=4, progress=False)
    assert (out / "gt_database" / "mine.txt").read_text() == "mine"
    assert (out / "training" / "velodyne" / "notes.md").exists()
    with pytest.raises(ValueError, match="frames"):
        write_synthetic_kitti(tmp_path / "new", 0, progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        write_synthetic_kitti(tmp_path / "new", 1, val_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="seed"):
        generate_scene(-1)


@pytest.mark.slow  # starting spawn workers imports torch in each (~5 s)
def test_write_synthetic_kitti_workers_same_bytes(tmp_path):
    write_synthetic_kitti(tmp_path / "one", 2, seed=9, progress=False)
    write_synthetic_kitti(tmp_path / "two", 2, seed=9, progress=False, workers=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 3 + 1
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_2d_boxes_match_projected_label_corners(frames):
    """Reference: the KITTI devkit's corners of each label box, projected one by one with P2 (a plain loop);
    for boxes wholly in front of the camera the 2-D box is their min / max clipped to the image."""
    projection = frames[0].calib.P[2].numpy()
    checked = 0
    for frame in frames:
        labels = frame.labels
        for row, name in enumerate(labels.names):
            if name == "DontCare":
                continue
            x, y, z, length, height, width, ry = labels.boxes_camera[row].tolist()
            us, vs = [], []
            for dx in (-length / 2, length / 2):
                for dy in (0.0, -height):
                    for dz in (-width / 2, width / 2):
                        cx = math.cos(ry) * dx + math.sin(ry) * dz + x
                        cz = -math.sin(ry) * dx + math.cos(ry) * dz + z
                        pix = projection[:3, :3] @ np.array([cx, y + dy, cz]) + projection[:3, 3]
                        us.append(pix[0] / pix[2])
                        vs.append(pix[1] / pix[2])
            if min(cz for cz in [z - length, z]) < 0.5:
                continue
            expected = [max(min(us), 0), max(min(vs), 0), min(max(us), IMAGE_HW[1] - 1), min(max(vs), IMAGE_HW[0] - 1)]
            assert np.allclose(labels.bbox[row].numpy(), expected, atol=1e-6)
            checked += 1
    assert checked >= 10
