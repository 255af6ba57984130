"""A hand-written BERT-like encoder: no Hugging Face class, so nothing can rebuild it but its graph."""

import torch.nn.functional as F
from torch import nn


class TinyEncoder(nn.Module):
    def __init__(self, vocab=50, d=32, heads=4, ffn=64, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.heads = heads
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                dict(q=nn.Linear(d, d), k=nn.Linear(d, d), v=nn.Linear(d, d), o=nn.Linear(d, d), ln1=nn.LayerNorm(d),
                     fc1=nn.Linear(d, ffn), fc2=nn.Linear(ffn, d), ln2=nn.LayerNorm(d))
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(d, 2)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        b, s, d = x.shape
        for blk in self.blocks:
            q, k, v = (blk[n](x).view(b, s, -1, d // self.heads).transpose(1, 2) for n in "qkv")
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, -1)
            x = blk["ln1"](x + blk["o"](a))
            x = blk["ln2"](x + blk["fc2"](F.gelu(blk["fc1"](x))))
        return self.head(x[:, 0])
