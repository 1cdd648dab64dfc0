from geoattn.models.roitr import RoITr, RoITrConfig, RoITrOutput
