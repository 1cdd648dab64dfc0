from geoattn.models.glagcn import GLAGCN, TemporalConvLifter
from geoattn.models.lagnn import LAGAT, LAGCN, LAGCNII, LASAGE, LocalAugmentationWrapper
from geoattn.models.roitr import RoITr, RoITrConfig, RoITrOutput
from geoattn.models.largegt import LargeGT
from geoattn.models.scatterformer import ScatterFormerBackbone, ScatterFormerOutput
