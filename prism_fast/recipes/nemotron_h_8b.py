"""PRISM mid-training of Nemotron-H 8B (hybrid: Mamba2 / attention / relu^2 MLP layers): the paper's Table 16 recipe (see recipes/paper.py).

    torchrun --nnodes 16 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe nemotron_h_8b --model.path DIR
Model files: `huggingface-cli download nvidia/Nemotron-H-8B-Base-8K --local-dir models/Nemotron-H-8B-Base-8K`.
"""
from prism_fast.recipes.paper import paper_recipe


def nemotron_h_8b(model_path: str | None = None, data_root: str = "data/prism"):
    return paper_recipe("nemotron_h_8b", "nvidia/Nemotron-H-8B-Base-8K", model_path=model_path, data_root=data_root)
