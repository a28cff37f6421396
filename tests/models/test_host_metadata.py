"""Packed-batch metadata comes from the host: the trainer keeps cu_seqlens on the CPU (the loader built it there)
and the model validates it and reads the longest document there, so a micro step needs no device-to-host sync
(the GPU twin of this test, tests/gpu/test_no_host_sync_gpu.py, asserts it with torch.cuda.set_sync_debug_mode).

Here the "device" is the meta device: any read of a device value (.tolist(), int(tensor)) raises there, so a
forward context built from meta inputs proves the host metadata is what was used."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prism_fast.models import build_model, tiny_config
from prism_fast.train.trainer import Trainer


@pytest.mark.parametrize("model_type", ["llama", "nemotron_h"])
def test_forward_context_uses_the_host_cu_seqlens_it_is_given(model_type):
    model = build_model(tiny_config(model_type), device="meta")
    ids = torch.zeros(1, 24, dtype=torch.long, device="meta")
    cu = torch.tensor([0, 5, 6, 24], dtype=torch.int64)                      # host, as the loader makes it
    ctx = model.make_context(ids, cu_seqlens=cu)
    assert ctx.max_seqlen == 18 and isinstance(ctx.max_seqlen, int)
    assert ctx.attn_cu_seqlens.device.type == "meta" and ctx.attn_cu_seqlens.dtype == torch.int32
    assert ctx.seq_idx.shape == (1, 24) and ctx.seq_idx.device.type == "meta"
    with pytest.raises(ValueError, match="cu_seqlens must increase from 0 to T=24"):    # validated on the host
        model.make_context(ids, cu_seqlens=torch.tensor([0, 7, 5, 24]))
    with pytest.raises((NotImplementedError, RuntimeError)):                  # a device tensor must be read
        model.make_context(ids, cu_seqlens=cu.to("meta"))


def test_trainer_moves_the_batch_but_keeps_cu_seqlens_on_the_host():
    batch = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "labels": torch.zeros(1, 8, dtype=torch.long),
             "position_ids": torch.zeros(1, 8, dtype=torch.long), "domain_ids": torch.zeros(1, 8, dtype=torch.long),
             "cu_seqlens": torch.tensor([0, 3, 8])}
    stand_in = SimpleNamespace(device=torch.device("meta"), cp=None)        # only what _to_device reads
    mb = Trainer._to_device(stand_in, batch)
    assert mb["input_ids"].device.type == "meta" and mb["labels"].device.type == "meta"
    assert mb["cu_seqlens"].device.type == "cpu" and mb["cu_seqlens"].dtype == torch.int32
