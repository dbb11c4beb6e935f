"""m3p_fairseq.evaluation on known inputs: tables and averages, scores against sacrebleu itself,
the incongruent-image derangement, source masking, off-target detection, saved hypotheses,
and preprocess.subsample."""

import csv
import io

import numpy as np
import pytest
import sacrebleu
import torch

from helpers import as_if_trained, generate, setup_task
from m3p_fairseq.data.batch_keys import IMAGE_USABLE, MODALITIES
from m3p_fairseq.evaluation import hypotheses
from m3p_fairseq.evaluation.language_id import langid_code, off_target_rate
from m3p_fairseq.evaluation.probes import (
    derangement,
    first_sentences,
    mask_words,
    masked_word_order,
    through_mdropnet_path,
    with_incongruent_images,
    with_masked_source,
    without_images,
)
from m3p_fairseq.evaluation.scoring import average, corpus_scores
from m3p_fairseq.evaluation.tables import csv_table, image_awareness_table, markdown_tables
from m3p_fairseq.models.mdropnet import IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY

RESULTS = {
    "text-only": {"test": {"en-de": {"bleu": 30.0, "chrf": 50.0}, "de-en": {"bleu": 34.0, "chrf": 55.0}}},
    "m3p": {"test": {"en-de": {"bleu": 31.25, "chrf": 52.0}, "de-en": {"bleu": 36.0, "chrf": 57.5}},
            "test-incongruent": {"en-de": {"bleu": 20.0, "chrf": 40.0}, "de-en": {"bleu": 25.0, "chrf": 45.0}}},
    "bilingual": {"test": {"de-en": {"bleu": 33.0, "chrf": 54.0}}},
}


def test_markdown_table_has_systems_as_rows_and_directions_plus_average_as_columns():
    text = markdown_tables(RESULTS)
    bleu = text.split("### test: BLEU\n\n")[1].split("\n\n")[0].splitlines()
    assert bleu[0] == "| system | en-de | de-en | average |"
    assert bleu[2] == "| text-only | 30.0 | 34.0 | 32.0 |"
    assert bleu[3] == "| m3p | 31.2 | 36.0 | 33.6 |"
    assert bleu[4] == "| bilingual | - | 33.0 | 33.0* |"  # averaged over the one direction it has
    chrf = text.split("### test: chrF\n\n")[1].splitlines()
    assert chrf[3] == "| m3p | 52.0 | 57.5 | 54.8 |"
    assert "### test-incongruent: BLEU" in text


def test_csv_table_rows_are_split_metric_system():
    rows = list(csv.DictReader(io.StringIO(csv_table(RESULTS))))
    assert len(rows) == 2 * 3 + 2 * 1  # test: 3 systems x 2 metrics; test-incongruent: m3p x 2
    m3p_bleu = next(r for r in rows if (r["split"], r["metric"], r["system"]) == ("test", "bleu", "m3p"))
    assert m3p_bleu == {"split": "test", "metric": "bleu", "system": "m3p", "en-de": "31.25", "de-en": "36.00",
                        "average": "33.62", "directions_averaged": "2"}
    bilingual = next(r for r in rows if (r["metric"], r["system"]) == ("chrf", "bilingual"))
    assert bilingual["en-de"] == "" and bilingual["average"] == "54.00" and bilingual["directions_averaged"] == "1"


def test_average_skips_missing_directions():
    assert average([30.0, None, 36.0]) == 33.0
    assert average([None]) is None


def test_image_awareness_table_reports_the_drop():
    lines = image_awareness_table(RESULTS, {"test": "test-incongruent"}).splitlines()
    assert lines[2] == "| m3p | test | en-de | 31.2 | 20.0 | +11.2 |"
    assert lines[3] == "| m3p | test | de-en | 36.0 | 25.0 | +11.0 |"
    assert lines[4] == "| m3p | test | **average** | 33.6 | 22.5 | **+11.1** |"
    assert len(lines) == 5  # systems without incongruent runs have no rows


def test_scores_equal_a_direct_sacrebleu_call():
    hyps = ["Ein kleiner roter Kreis links.", "Zwei Hunde spielen im Schnee!", "Ein Mann."]
    refs = ["Ein kleiner roter Kreis links.", "Zwei hunde spielen im Schnee.", "Eine Frau liest."]
    scores = corpus_scores(hyps, refs)
    assert scores["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert scores["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert "case:mixed" in scores["signature"] and "tok:13a" in scores["signature"]
    assert scores["chrf_signature"].startswith("nrefs:1|case:mixed")
    # case-sensitive: lower-casing a hypothesis changes the score
    assert corpus_scores([h.lower() for h in hyps], refs)["bleu"] < scores["bleu"]
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        corpus_scores(hyps, refs[:2])


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_moves_every_sentence_and_is_seeded(n):
    for seed in range(5):
        permutation = derangement(n, seed)
        assert sorted(permutation.tolist()) == list(range(n))
        assert (permutation != np.arange(n)).all()
        assert (derangement(n, seed) == permutation).all()
    if n > 3:
        assert any((derangement(n, 0) != derangement(n, seed)).any() for seed in range(1, 5))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_incongruent_images_give_each_sentence_another_sentences_image(data_dir):
    task, _ = setup_task(data_dir)
    task.cfg.source_lang, task.cfg.target_lang = "en", "de"
    task.load_dataset("test")
    dataset = task.dataset("test")
    shuffled, unchanged = with_incongruent_images(dataset, seed=3)
    assert unchanged == 0
    assert (shuffled.image_rows != dataset.image_rows).all()
    assert sorted(shuffled.image_rows.tolist()) == sorted(dataset.image_rows.tolist())
    assert (shuffled.image_rows == dataset.image_rows[derangement(len(dataset), 3)]).all()
    patches, _ = dataset.image_store.read(int(dataset.image_rows[derangement(len(dataset), 3)[0]]))
    assert (shuffled[0]["image_patches"] == patches).all()  # the example reads the shuffled row
    assert (shuffled[0]["source"] == dataset[0]["source"]).all()  # text untouched
    assert dataset.image_rows is not shuffled.image_rows


def test_mask_words_is_nested_across_ratios():
    sentence = "A small red triangle on the left ."
    order = masked_word_order(8, seed=1, sentence=0)
    assert mask_words(sentence, 0.0, order) == sentence
    assert mask_words(sentence, 1.0, order) == " ".join(["[MASK]"] * 8)
    half = mask_words(sentence, 0.5, order).split()
    quarter = mask_words(sentence, 0.25, order).split()
    assert half.count("[MASK]") == 4 and quarter.count("[MASK]") == 2
    assert all(h == "[MASK]" for q, h in zip(quarter, half) if q == "[MASK]")


def test_masked_source_keeps_the_tag_and_masks_words(data_dir):
    task, _ = setup_task(data_dir)
    task.cfg.source_lang, task.cfg.target_lang = "en", "de"
    task.load_dataset("test")
    dataset = task.dataset("test")
    unmasked = with_masked_source(dataset, task, 0.0, max_sentences=5)
    assert len(unmasked) == 5
    for i in range(5):  # re-encoding the detokenized text gives the binarized tokens back
        assert unmasked.src[i].tolist() == dataset.src[i].tolist()
        assert unmasked.tgt[i].tolist() == dataset.tgt[i].tolist()
    dictionary = dataset.src_dict
    mask = dictionary.index("<mask>")
    assert mask != dictionary.unk()  # the task adds the symbol MMA masks with
    masked = with_masked_source(dataset, task, 1.0, max_sentences=5)
    for i in range(5):
        # every piece of every word becomes the <mask> MMA trains with, one per piece
        assert masked.src[i][0] == task.lang_tag_index("de")
        assert masked.src[i][1:-1].tolist() == [mask] * (len(dataset.src[i]) - 2)
        assert masked.src[i][-1] == dictionary.eos()
    # half of the words: exactly the pieces of the words in the seeded order are masked
    half = with_masked_source(dataset, task, 0.5, max_sentences=5)
    for i in range(5):
        pieces = [dictionary[t] for t in dataset.src[i][1:-1].tolist()]
        words = []  # each word's piece positions (a word starts with "▁")
        for position, piece in enumerate(pieces):
            if piece.startswith("\u2581") or not words:
                words.append([])
            words[-1].append(position)
        chosen = masked_word_order(len(words), 1, i)[:round(0.5 * len(words))]
        expected = [dictionary.index(p) for p in pieces]
        for word in chosen:
            for position in words[word]:
                expected[position] = mask
        assert half.src[i][1:-1].tolist() == expected
    assert (masked.image_rows == dataset.image_rows[:5]).all()
    # a raw-text mask word instead: this corpus trained no [MASK] symbol, so it is <unk>
    worded = with_masked_source(dataset, task, 1.0, mask_word="[MASK]", max_sentences=5)
    for i in range(5):
        text = dictionary.string(worded.src[i][1:], "sentencepiece")
        assert set(text.split()) == {"<unk>"}
        assert len(text.split()) == len(dictionary.string(dataset.src[i][1:], "sentencepiece").split())


def test_off_target_rate_on_a_hand_made_mix():
    german = ["Ein kleines rotes Dreieck ist links oben im Bild.", "Zwei Hunde spielen im Schnee neben dem Haus."]
    english = ["A small red triangle is at the top left of the picture."]
    french = ["Deux chiens jouent dans la neige à côté de la maison."]
    rate, count = off_target_rate(german + english + french + [""], "de", ["en", "de", "fr"])
    assert count == 3  # English, French and the empty hypothesis
    assert rate == pytest.approx(60.0)
    assert off_target_rate(german, "de")[1] == 0  # among all 97 languages too
    assert off_target_rate(english + french, "en", ["en", "de", "fr"]) == (50.0, 1)


def test_language_codes_map_to_py3langid():
    assert langid_code("de") == "de" and langid_code("pt_BR") == "pt" and langid_code("ces") == "cs"
    with pytest.raises(ValueError, match="'xx'.*not one py3langid identifies"):
        langid_code("xx")


def test_saved_hypotheses_round_trip_and_misalignment(tmp_path):
    hypotheses.save(tmp_path, "m3p", "test", "en-de", ["Ein Hund.", ""], ["Ein Hund.", "Eine Katze."])
    hypotheses.save(tmp_path, "m3p", "test-incongruent", "en-de", ["Eine Katze.", "Ein Hund."],
                    ["Ein Hund.", "Eine Katze."])
    found = hypotheses.saved(tmp_path)
    assert found["m3p"]["test"]["en-de"] == (["Ein Hund.", ""], ["Ein Hund.", "Eine Katze."])
    assert found["m3p"]["test-incongruent"]["en-de"][0] == ["Eine Katze.", "Ein Hund."]
    (tmp_path / "hyp" / "m3p" / "test.en-de.txt").write_text("Ein Hund.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.en-de.txt has 1 lines but .*ref/test.en-de.txt has 2"):
        hypotheses.saved(tmp_path)
    with pytest.raises(ValueError, match="sentence 1 contains a line break"):
        hypotheses.save(tmp_path, "m3p", "test", "en-de", ["a\nb"], ["c"])


def test_subsample_keeps_nested_aligned_training_subsets(data_dir, tmp_path):
    from fairseq.data import indexed_dataset

    from m3p_fairseq.data.image_features import read_image_ids
    from preprocess.subsample import kept_sentences, subsample

    def sentences(directory, lang):
        dataset = indexed_dataset.MMapIndexedDataset(str(directory / f"train.{lang}"))
        return [tuple(dataset[i].tolist()) for i in range(len(dataset))]

    full = {lang: sentences(data_dir, lang) for lang in ("en", "de", "fr")}
    full_ids = read_image_ids(data_dir / "train.image_ids")
    kept = {}
    for fraction in (0.25, 0.5):
        out = subsample(data_dir, tmp_path / f"data-{fraction}", fraction, seed=7)
        rows = kept_sentences(len(full["en"]), fraction, seed=7).tolist()
        assert len(rows) == round(fraction * len(full["en"])) == len(set(rows))
        for lang in ("en", "de", "fr"):  # a multi-way split stays aligned across languages
            assert sentences(out, lang) == [full[lang][r] for r in rows]
        assert read_image_ids(out / "train.image_ids") == [full_ids[r] for r in rows]
        assert (out / "test.en.bin").is_symlink() and (out / "dict.txt").is_symlink()
        kept[fraction] = set(rows)
    assert kept[0.25] < kept[0.5]  # nested
    task, _ = setup_task(tmp_path / "data-0.25")
    task.load_dataset("train")
    assert len(task.dataset("train")) > 0
    with pytest.raises(ValueError, match=r"--fraction must be in \(0, 1\]"):
        subsample(data_dir, tmp_path / "data-0", 0.0)


def test_same_label_neighbours_separates_clusters_from_a_mix():
    from m3p_fairseq.evaluation.analysis import same_label_neighbours

    rng = np.random.default_rng(0)
    labels = ["en"] * 20 + ["de"] * 20
    apart = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(50, 1, (20, 4))])
    assert same_label_neighbours(apart, labels, k=5) == 1.0
    mixed = rng.normal(0, 1, (40, 4))
    assert 0.3 < same_label_neighbours(mixed, labels, k=5) < 0.7
    pairs = np.array([[0.0], [0.1], [5.0], [5.1]])  # each point's nearest neighbour has the other label
    assert same_label_neighbours(pairs, ["en", "de", "en", "de"], k=1) == 0.0


def test_without_images_every_sentence_takes_the_text_only_path(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--source-lang", "en", "--target-lang", "de")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    task.load_dataset("test")
    dataset = task.dataset("test")
    shuffled, _ = with_incongruent_images(dataset, seed=3)
    indices = list(range(8))
    assert generate(task, model, dataset, indices) != generate(task, model, shuffled, indices)  # images matter
    blind = without_images(dataset)
    from_text = generate(task, model, blind, indices)
    assert from_text == generate(task, model, without_images(shuffled), indices)
    # the same as asking the encoder for MDropNet's text-only mode (Eq. 9) with the images given
    assert from_text == generate(task, model, through_mdropnet_path(dataset, TEXT_ONLY), indices)
    assert blind[0][IMAGE_USABLE] is False and dataset[0][IMAGE_USABLE] is True  # the loaded split untouched
    assert blind.image_store.num_unusable == len(blind.image_store.usable)


def test_each_mdropnet_path_reads_only_its_inputs(data_dir):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--source-lang", "en", "--target-lang", "de")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    task.load_dataset("test")
    dataset = task.dataset("test")
    indices = list(range(8))
    shuffled, _ = with_incongruent_images(dataset, seed=3)
    other_sources = first_sentences(dataset, len(indices), sources=[dataset.src[i] for i in reversed(indices)])

    def through(mode, variant):
        return generate(task, model, through_mdropnet_path(variant, mode), indices)

    captions = through(IMAGE_ONLY, dataset)  # Eq. 10: the image and the target tag only
    assert captions == through(IMAGE_ONLY, other_sources)
    assert captions != through(IMAGE_ONLY, shuffled)
    from_text = through(TEXT_ONLY, dataset)  # Eq. 9: the source only
    assert from_text == through(TEXT_ONLY, shuffled) == generate(task, model, without_images(dataset), indices)
    assert through(TEXT_AND_IMAGE, dataset) == generate(task, model, dataset, indices)  # what inference does
    assert MODALITIES not in dataset.collater([dataset[0]])["net_input"]  # the loaded split untouched
