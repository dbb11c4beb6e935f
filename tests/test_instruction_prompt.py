"""The decoder-only prompt is the paper's Fig. 3a, word for word, with the image between the
instruction and the source; the template is an option, and a Llama-tokenised prompt keeps its
newlines as Llama's pieces."""

import pytest
import sentencepiece as spm
import torch
from fairseq.data import Dictionary

from m3p_fairseq.models.instruction_prompt import IMAGE, SOURCE, InstructionPrompt

# Fig. 3a of the paper, typed from the figure (not from the code), for en -> de
PAPER_EN_DE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request.\n### Instruction:\nPlease translate the following sentence from English to German:")
RESPONSE = "### Response:"


def prompt_for(template=None, spm_model=None):
    dictionary = Dictionary()
    en, de = dictionary.add_symbol("__en__"), dictionary.add_symbol("__de__")
    kwargs = {} if template is None else {"template": template}
    return InstructionPrompt(dictionary, {en: "en", de: "de"}, spm_model=spm_model, **kwargs), dictionary, en, de


def words(dictionary, segment):
    return [dictionary[i] for i in segment.tolist()]


def test_the_default_prompt_is_fig_3a_with_the_image_before_the_source():
    prompt, dictionary, en, de = prompt_for()
    layout = prompt.layout(en, de)
    assert [s if isinstance(s, str) else "text" for s in layout] == ["text", "text", IMAGE, SOURCE, "text"]
    assert words(dictionary, layout[0]) == ["<s>"]
    assert words(dictionary, layout[1]) == PAPER_EN_DE.split()
    assert words(dictionary, layout[4]) == RESPONSE.split()
    # the other direction names the languages the other way round
    assert words(dictionary, prompt.layout(de, en)[1])[-4:] == ["from", "German", "to", "English:"]


def test_the_template_is_an_option_and_the_old_layout_still_rebuilds():
    prompt, dictionary, en, de = prompt_for("Translate {src} to {tgt}. {source} Picture: {image}")
    layout = prompt.layout(en, de)
    assert [s if isinstance(s, str) else words(dictionary, s) for s in layout] == [
        ["<s>"], ["Translate", "English", "to", "German."], SOURCE, ["Picture:"], IMAGE]
    old, dictionary, en, de = prompt_for("Please translate the following sentence from {src} to {tgt}:")
    layout = old.layout(en, de)
    assert layout[0] == IMAGE and layout[2] == SOURCE and words(dictionary, layout[1])[-2:] == ["to", "German:"]
    with pytest.raises(ValueError, match="once each"):
        prompt_for("{src} {tgt} {image}")


def test_a_llama_style_tokenizer_keeps_the_newlines(tmp_path):
    """A SentencePiece model like Llama's (no normalisation, byte fallback) encodes the newlines of
    Fig. 3a as <0x0A>, with no stray "▁" where a part starts on a new line."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([PAPER_EN_DE.replace("\n", " "), RESPONSE, "a man rides a red bike"] * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "llama"), vocab_size=320, hard_vocab_limit=False,
                                   byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, character_coverage=1.0)
    model = str(tmp_path / "llama.model")
    prompt, dictionary, en, de = prompt_for(spm_model=model)
    layout = prompt.layout(en, de)
    sp = spm.SentencePieceProcessor(model_file=model)
    assert [s if isinstance(s, str) else "text" for s in layout] == ["text", "text", IMAGE, SOURCE, "text"]
    instruction, response = words(dictionary, layout[1]), words(dictionary, layout[4])
    assert instruction == sp.encode(PAPER_EN_DE, out_type=str)
    assert instruction.count("<0x0A>") == 2
    assert sp.decode(response) == "\n" + RESPONSE + "\n"
    assert torch.equal(layout[0], torch.tensor([dictionary.bos()]))
