from geoattn.data.ogb import (load_ogb_node_dataset, ogb_evaluator, ogb_node_split,
                              write_synthetic_ogb_node_dataset)
from geoattn.data.bvh import load_bvh, load_bvh_h36m17
from geoattn.data.asf_amc import load_asf_amc
from geoattn.data.h36m import (ChunkedWindows, flip_pose, load_positions_2d, load_positions_3d,
                               normalize_screen_coordinates)
from geoattn.data.scenes import EVAL_SEEDS, TRAIN_SEEDS, FragmentPair, SyntheticPairs, fragment_pair
from geoattn.data.threedmatch import (ThreeDMatchPairs, read_fragment, read_gt_info, read_gt_log, read_gt_overlap,
                                     write_gt_log)
from geoattn.data.largegt import (LargeGTBatch, LargeGTCollate, LargeGTTokens, precompute_hop_tokens,
                                  precompute_largegt, sample_node_sequences)
from geoattn.data.kitti import (KITTI_CLASSES, KittiCalibration, KittiFrame, KittiLabels, boxes_camera_to_lidar,
                                boxes_lidar_to_camera, load_info_pickle, load_kitti_frame, load_mmdet3d_frame,
                                read_calib, read_image, read_label, read_velodyne)
