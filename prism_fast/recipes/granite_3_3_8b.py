"""PRISM mid-training of Granite-3.3 8B (dense; multipliers, logits scaling): the paper's Table 16 recipe (see recipes/paper.py).

    torchrun --nnodes 16 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe granite_3_3_8b --model.path DIR
Model files: `huggingface-cli download ibm-granite/granite-3.3-8b-base --local-dir models/granite-3.3-8b-base`.
"""
from prism_fast.recipes.paper import paper_recipe


def granite_3_3_8b(model_path: str | None = None, data_root: str = "data/prism"):
    return paper_recipe("granite_3_3_8b", "ibm-granite/granite-3.3-8b-base", model_path=model_path, data_root=data_root)
