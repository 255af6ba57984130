"""Hand-written encoders for the structure patterns no Hugging Face family in the tests has."""

import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    """Self-attention with separate or fused QKV; `fused` is "no", "chunk" ([3][H][D] rows, chunk(3)),
    or "per_head" ([H][3][D] rows, which heads-first fused layouts use)."""

    def __init__(self, d, heads, fused="no"):
        super().__init__()
        self.heads, self.fused = heads, fused
        if fused == "no":
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        else:
            self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)

    def forward(self, x):
        b, s, d = x.shape
        h = self.heads
        if self.fused == "no":
            q, k, v = (m(x).view(b, s, h, d // h).transpose(1, 2) for m in (self.q, self.k, self.v))
        elif self.fused == "chunk":
            q, k, v = (t.reshape(b, s, h, d // h).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        else:
            q, k, v = self.qkv(x).view(b, s, h, 3, d // h).permute(3, 0, 2, 1, 4).unbind(0)
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d))


class GatedEncoder(nn.Module):
    """Pre-norm layers; a SwiGLU FFN with two up-projections (gate, up) or one chunked in two."""

    def __init__(self, vocab=50, d=32, heads=4, ffn=48, layers=2, fused="no", chunked=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.chunked = chunked
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.ModuleDict(dict(norm1=nn.LayerNorm(d), attn=_Attention(d, heads, fused), norm2=nn.LayerNorm(d),
                                       down=nn.Linear(ffn, d)))
            if chunked:
                layer["up"] = nn.Linear(d, 2 * ffn)
            else:
                layer["gate"], layer["up"] = nn.Linear(d, ffn), nn.Linear(d, ffn)
            self.layers.append(layer)
        self.head = nn.Linear(d, 2)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + layer["attn"](layer["norm1"](x))
            y = layer["norm2"](x)
            if self.chunked:
                a, g = layer["up"](y).chunk(2, dim=-1)
                hidden = F.silu(g) * a
            else:
                hidden = F.silu(layer["gate"](y)) * layer["up"](y)
            x = x + layer["down"](hidden)
        return self.head(x[:, 0])


class FoldedBiasEncoder(nn.Module):
    """Eager attention on [batch x heads, S, S] scores plus a per-head bias tiled over the batch with
    `repeat`: the bias's axis counts batch and heads together, which compaction cannot slice."""

    def __init__(self, vocab=50, d=32, heads=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.head_bias = nn.Parameter(torch.randn(heads, 1, 1))
        self.fc1, self.fc2 = nn.Linear(d, 64), nn.Linear(64, d)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        b, s, d = x.shape
        h = self.heads

        def split(t):
            return t.view(b, s, h, d // h).transpose(1, 2).reshape(b * h, s, d // h)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.bmm(q, k.transpose(1, 2)) + self.head_bias.repeat(b, 1, 1)
        out = torch.bmm(scores.softmax(-1), v).view(b, h, s, d // h).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(out)
        return x + self.fc2(F.gelu(self.fc1(x)))


class SharedOutsideEncoder(nn.Module):
    """One FFN applied twice whose FC1 weight is also read by the output head."""

    def __init__(self, vocab=50, d=32, ffn=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for _ in range(2):
            x = x + self.fc2(F.gelu(self.fc1(x)))
        return F.linear(x, self.fc1.weight)
