from geoattn.models.glagcn import GLAGCN, TemporalConvLifter
from geoattn.models.lagnn import LAGAT, LAGCN, LAGCNII, LASAGE, LocalAugmentationWrapper
from geoattn.models.roitr import RoITr, RoITrConfig, RoITrOutput
from geoattn.models.largegt import LargeGT
from geoattn.models.detection import (BasicBlock, CascadeDEDBackbone, CenterHead, CenterPointDetector, DEDBackbone,
                                      DynamicVoxelVFE, PFNLayerV2, SeparateHead, build_detector)
from geoattn.models.scatterformer import ScatterFormerBackbone, ScatterFormerOutput
from geoattn.models.logonet import (LoGoNetHead, PointSet, assign_targets, canonical_targets, decode_residuals,
                                    encode_residuals, sample_rois)
