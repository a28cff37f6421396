"""PRISM mid-training of Granite-4.0-H Micro 3B (hybrid Mamba2 + attention): the paper's Table 16 recipe (see recipes/paper.py).

    torchrun --nnodes 16 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe granite_4_0_h_micro --model.path DIR
Model files: `huggingface-cli download ibm-granite/granite-4.0-h-micro-base --local-dir models/granite-4.0-h-micro-base`.
"""
from prism_fast.recipes.paper import paper_recipe


def granite_4_0_h_micro(model_path: str | None = None, data_root: str = "data/prism"):
    return paper_recipe("granite_4_0_h_micro", "ibm-granite/granite-4.0-h-micro-base", model_path=model_path, data_root=data_root)
