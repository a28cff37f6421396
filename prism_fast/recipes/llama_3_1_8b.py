"""PRISM mid-training of LLaMA-3.1 8B (dense, GQA, llama3 RoPE scaling): the paper's Table 16 recipe (see recipes/paper.py).

    torchrun --nnodes 16 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe llama_3_1_8b --model.path DIR
Model files: `huggingface-cli download meta-llama/Llama-3.1-8B --local-dir models/Llama-3.1-8B`.
"""
from prism_fast.recipes.paper import paper_recipe


def llama_3_1_8b(model_path: str | None = None, data_root: str = "data/prism"):
    return paper_recipe("llama_3_1_8b", "meta-llama/Llama-3.1-8B", model_path=model_path, data_root=data_root)
