"""The language acquisition encoder of MLA (paper Sec. 3.1, Eqs. 7-11).

    X^0 = [W_e u_0, ..., W_e u_m] + E_pos              (7)   shared non-native embedding block
    H^i = TransformerLayer(X^{i-1}; theta_Phi^i)       (8)   the native text layers, frozen
    X^i = LA(H^i; theta_L^i)                           (9)   one acquirer per layer and language
    LA(X) = W_up ReLU(W_down X) + X                    (10)  W_up starts at zero: LA starts as identity
    t = W_a x^l_[EOS]                                  (11)  the native W_a, frozen

The native model is held outside this module's parameters and state_dict (:meth:`native`), so
an optimizer can never reach it and a checkpoint never carries a copy of it; what the checkpoint
carries instead is the native model's identity (embedding size and weights fingerprint, as
buffers), checked when the checkpoint is loaded.

Languages are independent: each has its own acquirers, and a language can be added later with
:meth:`add_language`; :meth:`freeze_for_extension` then leaves trainable only the new language's
acquirers and the embedding rows of words the earlier languages never had.

``finetune_text_tower`` builds the costly baseline instead: a trainable copy of the native text
layers and W_a shared by all non-native languages, no acquirers.
"""

import copy
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.native_identity import NativeIdentity, NativeModelMismatch
from .native_dual_encoder import NativeDualEncoder

DEFAULT_BOTTLENECK = 256
NATIVE_NAME_KEY = "native_name"


class LanguageAcquirer(nn.Module):
    """LA(X) = W_up ReLU(W_down X) + X (Eq. 10); W_up (and its bias) zero-initialised."""

    def __init__(self, width: int, bottleneck: int = DEFAULT_BOTTLENECK):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x))) + x


class _ParameterHolder(nn.Module):
    """A projection matrix (open_clip keeps W_a as a bare Parameter) as a module."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())


def _fingerprint_tensor(fingerprint: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(fingerprint)), dtype=torch.uint8)


class LanguageAcquisitionEncoder(nn.Module):
    """Non-native sentences [B, T] of one language -> t [B, E] in the native model's space."""

    def __init__(self, native: NativeDualEncoder, vocab_size: int, pad: int, eos: int,
                 languages: Iterable[str], embed_dim: Optional[int] = None,
                 bottleneck: int = DEFAULT_BOTTLENECK, use_acquirers: bool = True,
                 finetune_text_tower: bool = False):
        super().__init__()
        self._native = [native]  # a list: not a submodule, so neither trained nor saved
        self.pad, self.eos = pad, eos
        self.bottleneck = bottleneck
        self.use_acquirers = use_acquirers and not finetune_text_tower
        embed_dim = embed_dim or native.width
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=pad)  # theta_emb
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        with torch.no_grad():
            self.embed_tokens.weight[pad].zero_()
        self.embed_projection = nn.Linear(embed_dim, native.width)  # W_e of Eq. 7
        self.acquirers = nn.ModuleDict()
        for lang in languages:
            self.add_language(lang)
        # The costly baseline: a trainable copy of the native text layers and W_a, shared by all
        # non-native languages, instead of acquirers (the native model itself stays frozen).
        self.text_tower: Optional[nn.ModuleDict] = None
        if finetune_text_tower:
            clip = native.clip
            projection = clip.text_projection
            self.text_tower = nn.ModuleDict({
                "transformer": copy.deepcopy(clip.transformer), "ln_final": copy.deepcopy(clip.ln_final),
                "projection": copy.deepcopy(projection) if isinstance(projection, nn.Module)
                else _ParameterHolder(projection)})
            self.text_tower.requires_grad_(True)
        self.register_buffer("native_fingerprint", _fingerprint_tensor(native.identity.fingerprint))
        self.register_buffer("native_embed_dim", torch.tensor(native.embed_dim))
        self.register_buffer("frozen_rows", torch.zeros(vocab_size, dtype=torch.bool), persistent=False)
        self.embed_tokens.weight.register_hook(self._zero_frozen_rows)

    @property
    def native(self) -> NativeDualEncoder:
        return self._native[0]

    @property
    def languages(self) -> List[str]:
        return list(self.acquirers.keys())

    def add_language(self, lang: str) -> None:
        if lang in self.acquirers:
            raise ValueError(f"language {lang!r} already has acquirers")
        width = self.native.width
        self.acquirers[lang] = nn.ModuleList(
            LanguageAcquirer(width, self.bottleneck) for _ in range(self.native.num_text_layers))
        if not self.use_acquirers:  # ablation / full fine-tuning: kept for the layout, never used
            self.acquirers[lang].requires_grad_(False)

    @torch.no_grad()
    def init_embeddings(self, words: List[str], symbols: List[str], weight: torch.Tensor) -> int:
        """Start the rows of ``words`` (the dictionary after its special symbols) found in
        ``symbols`` from the matching row of ``weight``; returns how many were found."""
        row_of = {symbol: row for row, symbol in enumerate(symbols)}
        offset = self.embed_tokens.num_embeddings - len(words)
        found = 0
        for index, word in enumerate(words, start=offset):
            if word in row_of:
                self.embed_tokens.weight[index] = weight[row_of[word]].to(self.embed_tokens.weight.dtype)
                found += 1
        return found

    def trainable_parameter_count(self) -> int:
        """Parameters an optimizer can change (embedding rows frozen for an extension excluded)."""
        count = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if self.embed_tokens.weight.requires_grad:
            count -= int(self.frozen_rows.sum()) * self.embed_tokens.embedding_dim
        return count

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda()/.half() move the native model too
        super()._apply(fn, *args, **kwargs)
        self.native._apply(fn, *args, **kwargs)
        return self

    def _zero_frozen_rows(self, grad: torch.Tensor) -> torch.Tensor:
        # With no gradient ever, Adam's moments stay zero and the row stays bitwise unchanged.
        return grad.masked_fill(self.frozen_rows[:, None], 0.0) if self.frozen_rows.any() else grad

    def freeze_for_extension(self, new_languages: Iterable[str], known_vocab_size: int) -> None:
        """Train only the acquirers of ``new_languages`` and the embedding rows from
        ``known_vocab_size`` on (words the earlier languages' vocabulary did not have)."""
        if self.text_tower is not None:
            raise ValueError("a fine-tuned text tower is shared by all languages: a language cannot be added "
                             "without changing the others (that is what acquirers are for)")
        new_languages = set(new_languages)
        unknown = new_languages - set(self.acquirers)
        if unknown:
            raise ValueError(f"no acquirers for {sorted(unknown)}; languages: {self.languages}")
        for lang, layers in self.acquirers.items():
            for p in layers.parameters():
                p.requires_grad_(lang in new_languages)
        self.embed_projection.requires_grad_(False)
        self.frozen_rows[:known_vocab_size] = True
        self.embed_tokens.weight.requires_grad_(known_vocab_size < self.embed_tokens.num_embeddings)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # the name is for error messages only; it is popped again on load (names may differ in length)
        destination[prefix + NATIVE_NAME_KEY] = torch.tensor(list(self.native.name.encode()), dtype=torch.uint8)

    def check_native(self, state_dict: Dict[str, torch.Tensor], prefix: str = "") -> None:
        """Refuse weights trained against another native model (:class:`NativeModelMismatch`)."""
        name = state_dict.pop(prefix + NATIVE_NAME_KEY, None)
        stored = state_dict.get(prefix + "native_fingerprint")
        if stored is None:
            return
        stored_identity = NativeIdentity(bytes(name.tolist()).decode() if name is not None else "unknown",
                                         int(state_dict[prefix + "native_embed_dim"]), bytes(stored.tolist()).hex())
        if (stored_identity.embed_dim, stored_identity.fingerprint) != (self.native.embed_dim,
                                                                         self.native.identity.fingerprint):
            stored_identity.check_matches(self.native.identity, "this checkpoint of language acquirers")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.check_native(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def eos_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        is_eos = tokens == self.eos
        if not is_eos.any(dim=1).all():
            raise ValueError("a non-native sentence has no [EOS] token")
        return is_eos.int().argmax(dim=1)

    def forward(self, tokens: torch.Tensor, lang: str) -> torch.Tensor:
        if lang not in self.acquirers:
            raise KeyError(f"no language acquirers for {lang!r} (this model has {self.languages})")
        native = self.native
        if tokens.shape[1] > native.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens but the native model takes at most {native.context_length}")
        x = native.add_positions(self.embed_projection(self.embed_tokens(tokens)))  # Eq. 7
        tower = self.text_tower
        for i, acquirer in enumerate(self.acquirers[lang]):
            h = native.text_layer(i, x, tower["transformer"] if tower is not None else None)  # Eq. 8
            x = acquirer(h) if self.use_acquirers else h  # Eq. 9
        eos = x[torch.arange(len(tokens), device=tokens.device), self.eos_positions(tokens)]
        if tower is not None:
            projection = tower["projection"]
            if isinstance(projection, _ParameterHolder):
                projection = projection.weight
            return native.project_text(eos, tower["ln_final"], projection)
        return native.project_text(eos)  # Eq. 11


__all__ = ["LanguageAcquirer", "LanguageAcquisitionEncoder", "NativeModelMismatch", "DEFAULT_BOTTLENECK"]
