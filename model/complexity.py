"""Parameter counts and multiply-accumulates of the masked style modeling networks.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
meta device (no memory, no compute): convolutions and matrix products,
FLOPs / 2; BatchNorm, activations, pooling and interpolation are not counted.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .networks import MSM, MSMConfig


def parameter_counts(model: MSM) -> dict[str, int]:
    """Parameters per reference module name and ``total`` (the frozen ResNet ``fc`` included)."""
    counts = {name: sum(p.numel() for p in model.module(name).parameters()) for name in MSM.MODULES}
    return {**counts, "total": sum(counts.values())}


def _macs(function, count: int = 1) -> int:
    if count == 0:
        return 0
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops() // 2


def _module_macs(config: MSMConfig, pairs: int, contents: int, tokens: int, enhanced: int) -> dict[str, int]:
    with torch.device("meta"):
        model = MSM(config).eval()
        embed, image, dim = config.embed_size, config.image_size, config.style_dim
        result = {
            "style_embedding": _macs(lambda: model.style_embedding(torch.empty(pairs, 3, embed, embed),
                                                                   torch.empty(pairs, 3, embed, embed)), pairs),
            "content_embedding": _macs(lambda: model.content_embedding(torch.empty(contents, 3, embed, embed)), contents),
            "masked_token": 0,
            "transformer_encoder": _macs(lambda: model.transformer(torch.empty(1, tokens, dim),
                                                                   torch.empty(1, tokens, dim)), tokens),
            "stylized_enhancer": _macs(lambda: model.enhancer(torch.empty(enhanced, 3, image, image),
                                                              torch.empty(enhanced, dim)), enhanced),
        }
    return {**result, "total": sum(result.values())}


def inference_macs(config: MSMConfig, num_preferred: int = 20) -> dict[str, int]:
    """MACs to personalise one image at ``config.image_size`` from N preferred pairs.

    Style embedding on N pairs (2N images at ``embed_size``), content
    embedding on N + 1 images, the transformer on N + 1 tokens, the enhancer
    on one image; per module and ``total``. With the preferred set encoded
    once for many images, only content (1 image), transformer and enhancer
    are paid per image.
    """
    return _module_macs(config, num_preferred, num_preferred + 1, num_preferred + 1, 1)


def training_macs(config: MSMConfig, step: str, num_preferred: int = 10) -> dict[str, int]:
    """Forward MACs of one training sample and the estimated MACs of its training step.

    ``step1``: style embedding on one pair at ``embed_size`` and the enhancer
    on one image at ``image_size``, both trained. ``step2``: the frozen style
    embedding on N + 1 pairs, the content embedding on N + 1 images and the
    transformer on N + 1 tokens, trained. ``train_step`` counts a trained
    module's forward three times (forward, two backward products) and a frozen
    one's once.
    """
    if step == "step1":
        macs = _module_macs(config, 1, 0, 0, 1)
        forward = macs["style_embedding"] + macs["stylized_enhancer"]
        return {"forward": forward, "train_step": 3 * forward}
    if step == "step2":
        macs = _module_macs(config, num_preferred + 1, num_preferred + 1, num_preferred + 1, 0)
        trained = macs["content_embedding"] + macs["transformer_encoder"]
        return {"forward": trained + macs["style_embedding"], "train_step": 3 * trained + macs["style_embedding"]}
    raise ValueError(f"step must be step1 or step2, not {step!r}")


def format_table(counts: dict[str, int], macs: dict[str, int]) -> str:
    """A plain-text table: module, parameters, GMACs."""
    lines = [f"  {'module':<22}{'parameters':>14}{'GMACs':>10}"]
    for name in (*MSM.MODULES, "total"):
        lines.append(f"  {name:<22}{counts[name]:>14,}{macs.get(name, 0) / 1e9:>10.2f}")
    return "\n".join(lines)
