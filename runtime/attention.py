"""`torch.ops.mlprune.attention`: multi-head attention on [batch, seq, heads x head_size] tensors.

`fuse_attention` puts it in place of an encoder layer's reshape / transpose / SDPA / transpose /
reshape chain before ONNX export, where it becomes ONNX Runtime's fused
`com.microsoft.MultiHeadAttention`. In torch it is the same scaled-dot-product attention.
`bias` is additive, broadcasting to [batch, heads, q_len, kv_len]; `additive_mask` turns a
boolean mask (True = attend) into one, with the float32 minimum for masked keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASKED = torch.finfo(torch.float32).min


def additive_mask(mask: Tensor) -> Tensor:
    if mask.is_floating_point():
        return mask
    return torch.where(mask, 0.0, MASKED)


@torch.library.custom_op("mlprune::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, num_heads: int, scale: float) -> Tensor:
    batch, q_len, width = q.shape
    head = width // num_heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(batch, t.shape[1], num_heads, head).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(batch, q_len, width)


@attention.register_fake
def _(q, k, v, bias, num_heads, scale):
    torch._check(q.shape[-1] % num_heads == 0, lambda: "the query width must be a multiple of num_heads")
    return q.new_empty(q.shape)
