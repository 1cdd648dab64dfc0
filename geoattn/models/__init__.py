from geoattn.models.roitr import RoITr, RoITrConfig, RoITrOutput
from geoattn.models.largegt import LargeGT
