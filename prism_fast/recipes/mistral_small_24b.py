"""PRISM mid-training of Mistral-Small 24B (dense): the paper's Table 16 recipe (see recipes/paper.py).

    torchrun --nnodes 16 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe mistral_small_24b --model.path DIR
Model files: `huggingface-cli download mistralai/Mistral-Small-24B-Base-2501 --local-dir models/Mistral-Small-24B-Base-2501`.
"""
from prism_fast.recipes.paper import paper_recipe


def mistral_small_24b(model_path: str | None = None, data_root: str = "data/prism"):
    return paper_recipe("mistral_small_24b", "mistralai/Mistral-Small-24B-Base-2501", model_path=model_path, data_root=data_root)
