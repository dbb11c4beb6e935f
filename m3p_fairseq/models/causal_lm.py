"""Llama-style causal transformer blocks (pre-norm RMSNorm, rotary positions, SwiGLU) with a
key/value cache, for the decoder-only m3P model.

Module and parameter names follow Hugging Face's Llama (``layers.{i}.self_attn.q_proj``,
``mlp.gate_proj``, ``input_layernorm``, ``norm``, ...) so that a local Llama checkpoint maps
onto them name for name (m3p_fairseq/models/llama_checkpoint.py). Rotary embeddings use the
same "rotate half" convention as those checkpoints.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KeyValue = Tuple[Tensor, Tensor]  # each [B, kv_heads, S, head_dim], rotary already applied to keys


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype) -> Tuple[Tensor, Tensor]:
    """positions [B, T] -> cos, sin [B, 1, T, head_dim]; each sentence has its own positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype).unsqueeze(1), angles.sin().to(dtype).unsqueeze(1)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + _rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, heads: int, kv_heads: int, dropout: float):
        super().__init__()
        if embed_dim % heads or heads % kv_heads:
            raise ValueError(f"embedding dim {embed_dim} must be divisible by {heads} heads, and the heads "
                             f"by {kv_heads} key/value heads")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, embed_dim // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, embed_dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor,
                past: Optional[KeyValue] = None) -> Tuple[Tensor, KeyValue]:
        """x [B, T, C]; allowed [B, 1, T, S] bool (True = may attend), S = past length + T."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        repeat = self.heads // self.kv_heads  # grouped-query attention (Llama 2 70B, Llama 3)
        keys = k.repeat_interleave(repeat, dim=1) if repeat > 1 else k
        values = v.repeat_interleave(repeat, dim=1) if repeat > 1 else v
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), (k, v)


class SwiGLU(nn.Module):
    def __init__(self, embed_dim: int, ffn_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(embed_dim, ffn_dim, bias=False)
        self.up_proj = nn.Linear(embed_dim, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class CausalBlock(nn.Module):
    def __init__(self, embed_dim, ffn_dim, heads, kv_heads, dropout, attention_dropout, norm_eps):
        super().__init__()
        self.input_layernorm = RMSNorm(embed_dim, norm_eps)
        self.self_attn = CausalSelfAttention(embed_dim, heads, kv_heads, attention_dropout)
        self.post_attention_layernorm = RMSNorm(embed_dim, norm_eps)
        self.mlp = SwiGLU(embed_dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, cos, sin, allowed, past=None):
        attended, key_value = self.self_attn(self.input_layernorm(x), cos, sin, allowed, past)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        return x, key_value


class CausalTransformer(nn.Module):
    """Token embeddings, causal blocks, final norm and output projection (tied to the
    embeddings unless ``tie_embeddings`` is False, as in Llama 2)."""

    def __init__(self, vocab_size: int, padding_idx: int, embed_dim: int, ffn_dim: int, layers: int,
                 heads: int, kv_heads: int, dropout: float, attention_dropout: float, norm_eps: float,
                 rope_theta: float, tie_embeddings: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        nn.init.normal_(self.embed_tokens.weight, std=embed_dim ** -0.5)
        nn.init.zeros_(self.embed_tokens.weight[padding_idx])
        self.layers = nn.ModuleList(CausalBlock(embed_dim, ffn_dim, heads, kv_heads, dropout, attention_dropout,
                                                norm_eps) for _ in range(layers))
        self.norm = RMSNorm(embed_dim, norm_eps)
        self.lm_head = None if tie_embeddings else nn.Linear(embed_dim, vocab_size, bias=False)
        self.embed_dropout = nn.Dropout(dropout)
        self.head_dim = embed_dim // heads
        self.rope_theta = rope_theta

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor,
                past: Optional[List[KeyValue]] = None) -> Tuple[Tensor, List[KeyValue]]:
        """x [B, T, C] input embeddings, positions [B, T], allowed [B, 1, T, S] -> final-norm
        states [B, T, C] and every layer's keys/values (past ones included)."""
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_theta, x.dtype)
        x = self.embed_dropout(x)
        key_values = []
        for i, layer in enumerate(self.layers):
            x, key_value = layer(x, cos, sin, allowed, None if past is None else past[i])
            key_values.append(key_value)
        return self.norm(x), key_values

    def output_projection(self, states: Tensor) -> Tensor:
        if self.lm_head is not None:
            return self.lm_head(states)
        return F.linear(states, self.embed_tokens.weight)
