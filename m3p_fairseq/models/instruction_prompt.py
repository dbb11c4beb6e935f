"""The multimodal prompt of the decoder-only model (paper Fig. 3a), one option
(``--instruction-prompt``) that users can change::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.
    ### Instruction:
    Please translate the following sentence from {src} to {tgt}: {image} {source}
    ### Response:
    {target}

``{src}`` and ``{tgt}`` become the languages' English names (m3p_fairseq/data/languages.py),
``{image}`` the projected image patch tokens and ``{source}`` the source sentence; the target
follows the prompt (the decoder's first input is fairseq's </s>). The prompt starts with the
dictionary's ``<s>``, as Llama's tokenizer starts every sequence, and the text around the
placeholders is tokenised with the data's SentencePiece model: binarized with Llama's
``tokenizer.model`` (as ``--pretrained-llama`` asks), the prompt gets exactly Llama's pieces,
newlines included (``<0x0A>``), so a Llama-initialised model reads the Alpaca-style format it was
instruction-tuned on. A template without ``{image}`` and ``{source}`` is the format of earlier
checkpoints: ``[image][template][source]``, without ``<s>``.

Every prompt of every ordered pair of the task's languages is tokenised once, when the model is
built, with the data's SentencePiece model (DATA/spm.model) or, without one, split on whitespace.
Pieces the dictionary lacks (a small SentencePiece model trained on captions may never have
produced "▁Please") are appended to the dictionary before the embeddings are built; the same
data directory gives the same pieces in the same order when fairseq-generate rebuilds the model.
"""

import logging
import re
from typing import Dict, List, Optional, Tuple, Union

import sentencepiece as spm
import torch
from fairseq.data import Dictionary
from torch import Tensor

from ..data.languages import INSTRMULTI102_LANGUAGES

logger = logging.getLogger(__name__)

IMAGE = "{image}"
SOURCE = "{source}"
PAPER_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately "
                  "completes the request.\n### Instruction:\nPlease translate the following sentence from "
                  "{src} to {tgt}: {image} {source}\n### Response:\n")
DEFAULT_TEMPLATE = PAPER_TEMPLATE
_PLACEHOLDER = re.compile(r"(\{image\}|\{source\})")

#: a prompt's layout: token ids of text, or the IMAGE / SOURCE placeholder, in order
Segment = Union[Tensor, str]


def check_template(template: str) -> None:
    try:
        filled = template.format(src="S", tgt="T", image=IMAGE, source=SOURCE)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"--instruction-prompt {template!r}: only {{src}}, {{tgt}}, {{image}} and {{source}} "
                         f"may be filled in ({error})")
    if "{src}" not in template or "{tgt}" not in template or not filled.strip():
        raise ValueError(f"--instruction-prompt {template!r} must name both {{src}} and {{tgt}}")
    counts = (template.count(IMAGE), template.count(SOURCE))
    if counts not in ((0, 0), (1, 1)):
        raise ValueError(f"--instruction-prompt {template!r} must hold {{image}} and {{source}} once each "
                         "(or neither, for the [image][prompt][source] layout of earlier checkpoints)")


def split_template(template: str) -> Tuple[List[str], bool]:
    """The template's parts in order (text, IMAGE, SOURCE) and whether the prompt starts with <s>."""
    if IMAGE not in template:  # earlier checkpoints' layout
        return [IMAGE, template, SOURCE], False
    return [part for part in _PLACEHOLDER.split(template) if part], True


class InstructionPrompt:
    def __init__(self, dictionary: Dictionary, languages: Dict[int, str], template: str = DEFAULT_TEMPLATE,
                 spm_model: Optional[str] = None):
        """``languages``: {dictionary index of a language tag: language code}, in dictionary order."""
        template = template.replace("\\n", "\n")  # a newline typed on the command line as \n
        check_template(template)
        self.template = template
        sp = spm.SentencePieceProcessor(model_file=spm_model) if spm_model else None
        unnamed = sorted(code for code in languages.values() if code not in INSTRMULTI102_LANGUAGES)
        if unnamed:
            logger.warning("no English name for language tag(s) %s (m3p_fairseq/data/languages.py): "
                           "the prompt names them by their code", ", ".join(unnamed))
        parts, with_bos = split_template(template)
        size_before = len(dictionary)
        self._layouts: Dict[Tuple[int, int], List[Segment]] = {}
        for s in languages:
            for t in languages:
                if s == t:
                    continue
                layout: List[Segment] = [torch.tensor([dictionary.bos()])] if with_bos else []
                for part in parts:
                    if part in (IMAGE, SOURCE):
                        layout.append(part)
                        continue
                    pieces = self.tokenize(self.text(languages[s], languages[t], part), sp, first=not layout)
                    if pieces:
                        layout.append(torch.tensor([dictionary.add_symbol(p) for p in pieces], dtype=torch.long))
                self._layouts[(s, t)] = layout
        if len(dictionary) > size_before:
            logger.info("instruction prompt: %d pieces added to the dictionary: %s", len(dictionary) - size_before,
                        " ".join(dictionary.symbols[size_before:size_before + 30]))
        self.dictionary = dictionary
        self.languages = languages

    @staticmethod
    def tokenize(text: str, sp: Optional[spm.SentencePieceProcessor], first: bool) -> List[str]:
        if sp is None:
            return text.split()
        # The spaces around a placeholder belong to what fills it (a source starts with "▁").
        text = text.strip(" ")
        if not text:
            return []
        pieces = sp.encode(text, out_type=str)
        # A part that starts with a newline gets SentencePiece's dummy-prefix "▁" on its own in front;
        # inside the whole text there is none (the previous part ends the line).
        if not first and text[:1] == "\n" and pieces and pieces[0] == "▁":
            pieces = pieces[1:]
        return pieces

    @staticmethod
    def text(src: str, tgt: str, template: str = DEFAULT_TEMPLATE) -> str:
        """The template's text with the language names; the placeholders stay."""
        return template.format(src=INSTRMULTI102_LANGUAGES.get(src, src), tgt=INSTRMULTI102_LANGUAGES.get(tgt, tgt),
                               image=IMAGE, source=SOURCE)

    def layout(self, source_tag: int, target_tag: int) -> List[Segment]:
        """The prompt of a direction, from the language tags' dictionary indices: token-id tensors
        and the IMAGE and SOURCE placeholders, in order."""
        layout = self._layouts.get((source_tag, target_tag))
        if layout is None:
            names = [self.dictionary[i] if 0 <= i < len(self.dictionary) else str(i) for i in (source_tag, target_tag)]
            raise ValueError(f"no instruction prompt from {names[0]!r} to {names[1]!r}: both must be language "
                             f"tags of the dictionary ({', '.join(sorted(self.languages.values()))}), and differ")
        return layout
