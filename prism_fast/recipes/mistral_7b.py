"""PRISM mid-training of Mistral-7B v0.1 (dense, sliding-window attention): the paper's Table 16 recipe (see recipes/paper.py).

    torchrun --nnodes 16 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe mistral_7b --model.path DIR
Model files: `huggingface-cli download mistralai/Mistral-7B-v0.1 --local-dir models/Mistral-7B-v0.1`.
"""
from prism_fast.recipes.paper import paper_recipe


def mistral_7b(model_path: str | None = None, data_root: str = "data/prism"):
    return paper_recipe("mistral_7b", "mistralai/Mistral-7B-v0.1", model_path=model_path, data_root=data_root)
