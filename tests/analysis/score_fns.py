"""A user scoring function for the landscape CLI test (`--score tests.analysis.score_fns:param_norm`)."""
import torch


def param_norm(model, tokenizer):
    """Returns several named scores: the landscape writes one matrix (and plot) per key."""
    with torch.no_grad():
        norm = torch.sqrt(sum((p.float() ** 2).sum() for p in model.parameters())).item()
        ids = torch.tensor([tokenizer("The river")["input_ids"]])
        out = model(ids)
        logits = out if isinstance(out, torch.Tensor) else out.logits
    return {"param_norm": norm, "loss_proxy": float(-logits.float().log_softmax(-1)[0, -1].max())}
