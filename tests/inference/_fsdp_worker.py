"""torchrun worker for test_fsdp.py: an FSDP2-sharded tiny model generates exactly what the plain model does.

Each rank generates a DIFFERENT number of tokens (different prompts and answer lengths), so any per-token
collective would deadlock; after generate the parameters are sharded again and a training step still works;
update_weights after the step makes the engine follow the new weights. Rank 0 writes a JSON verdict to argv[1].
"""
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from prism_fast.distributed.fsdp import apply_fsdp
from prism_fast.inference import Engine, SamplingParams
from tests.inference.conftest import reference_greedy, tiny_model


def main(out_path: str):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    family = "nemotron_h"
    plain, model = tiny_model(family), tiny_model(family)
    prompts = [[5, 6, 7], [9] * 11] if rank == 0 else [[1], [2, 3, 4, 5, 6, 7, 8]]
    lens = [4, 9] if rank == 0 else [14, 2]
    params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in lens]
    apply_fsdp(model, init_device_mesh("cpu", (dist.get_world_size(),)), param_dtype=torch.float32)
    engine = Engine(model, max_batch=2)
    got = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    ok = got == [reference_greedy(plain, p, n)[0] for p, n in zip(prompts, lens)]
    resharded = all(isinstance(p, DTensor) for p in model.parameters())
    # a training step on the sharded model, then the engine must follow the new weights
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.randint(0, 256, (2, 16))
    model(ids, labels=ids).backward()
    opt.step()
    engine.update_weights()
    got2 = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    full = {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in model.state_dict().items()}
    plain.load_state_dict(full)
    ok2 = got2 == [reference_greedy(plain, p, n)[0] for p, n in zip(prompts, lens)] and got2 != got
    verdicts = [None] * dist.get_world_size()
    dist.all_gather_object(verdicts, {"rank": rank, "same_as_plain": ok, "resharded": resharded,
                                      "after_step": ok2})
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(verdicts, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
