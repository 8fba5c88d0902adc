"""Small models of the kinds users bring, written here (not dimat's built-ins): each exercises one structure the
permutation spec must describe -- attention heads, fused projections, grouped-query attention, recurrent cells,
depthwise and grouped convolutions, concatenations, upsampling, flattening with ``view``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention written by hand: q/k/v Linear on [B, T, D], heads by reshape, softmax(q kᵀ) v."""

    def __init__(self, dim: int, heads: int, style: str = "separate", kv_heads: int | None = None) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.style = heads, kv_heads or heads, style
        self.hd = dim // heads
        if style == "fused":
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, self.kv_heads * self.hd)
            self.v = nn.Linear(dim, self.kv_heads * self.hd)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        if self.style == "fused":  # timm's layout: [B, T, 3, H, hd]
            q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q(x).view(b, t, self.heads, self.hd).transpose(1, 2)
            k = self.k(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
            v = self.v(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        if self.style == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.kv_heads != self.heads)
        else:
            if self.kv_heads != self.heads:  # grouped-query attention: each k/v head serves several query heads
                k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
                v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
            att = (q @ k.transpose(-2, -1)) * self.hd ** -0.5
            out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, style: str, kv_heads: int | None = None) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mha = style == "mha"
        self.attn = (nn.MultiheadAttention(dim, heads, batch_first=True) if self.mha
                     else Attention(dim, heads, style, kv_heads))
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + (self.attn(h, h, h, need_weights=False)[0] if self.mha else self.attn(h))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A small vision transformer: patch embedding, cls token, learned position embedding, pre-LN blocks."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, dim=16, heads=4, depth=2, patch=4, style="separate",
                 kv_heads=None) -> None:
        super().__init__()
        c, h, w = input_shape
        n = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, style, kv_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


class UnrolledRNN(nn.Module):
    """An Elman cell unrolled by hand over the rows of an image: one Linear called once per step."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, hidden=24) -> None:
        super().__init__()
        self.inp = nn.Linear(input_shape[-1], hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def forward(self, x):
        x = x.flatten(1, 2) if x.dim() == 4 else x  # [B, rows, cols]
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return self.head(h)


class LeNet(nn.Module):
    """LeNet style: convolutions, then ``x.view(x.size(0), -1)`` (fails on channels-last inputs)."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1, self.conv2 = nn.Conv2d(c, 6, 3, padding=1), nn.Conv2d(6, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(12 * (h // 4) * (w // 4), 32), nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        e = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class MobileNetish(nn.Module):
    """MobileNetV2-like: stem, inverted residuals (depthwise 3×3, ReLU6, BatchNorm), global pool, head."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, c=8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(c, 4), InvertedResidual(c, 4))
        self.dw_double = nn.Conv2d(c, 2 * c, 3, padding=1, groups=c)  # depthwise with a channel multiplier
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        x = F.relu(self.dw_double(self.blocks(self.stem(x))))
        return self.head(x.mean((2, 3)))


class UNetish(nn.Module):
    """U-Net-like: a skip by torch.cat, ConvTranspose2d, nn.Upsample, PReLU(C), a grouped convolution."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10) -> None:
        super().__init__()
        c = input_shape[0]
        self.down1 = nn.Conv2d(c, 8, 3, padding=1)
        self.act1 = nn.PReLU(8)
        self.down2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up2 = nn.Upsample(scale_factor=1)
        self.fuse = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        a = self.act1(self.down1(x))
        b = F.relu(self.grouped(F.relu(self.down2(a))))
        u = self.up2(self.up(b))
        y = F.relu(self.fuse(torch.cat([u, a], dim=1)))
        return self.head(F.interpolate(y, scale_factor=0.5).mean((2, 3)))


class Recurrent(nn.Module):
    """nn.GRU / nn.LSTM / nn.RNN over the rows of an image, the last step's output into a hidden layer."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=10, kind="gru", hidden=12, layers=2,
                 bidirectional=True) -> None:
        super().__init__()
        cls = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[kind]
        self.rnn = cls(input_shape[-1], hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        out = hidden * (2 if bidirectional else 1)
        self.fc, self.head = nn.Linear(out, 16), nn.Linear(16, num_classes)

    def forward(self, x):
        y, _ = self.rnn(x.flatten(1, 2))
        return self.head(F.relu(self.fc(y[:, -1])))


def vit(input_shape=(1, 8, 8), num_classes=10, **kw) -> ViT:
    return ViT(input_shape, num_classes, **kw)
