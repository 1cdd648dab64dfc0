from geoattn.data.ogb import (load_ogb_node_dataset, ogb_evaluator, ogb_node_split,
                              write_synthetic_ogb_node_dataset)
