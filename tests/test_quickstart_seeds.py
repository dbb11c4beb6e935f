"""examples/quickstart/seeds.py: the mean ± sd (min–max) table over seeds, checked by hand."""

from helpers import REPO, import_script

import_script(REPO / "examples" / "quickstart" / "run.py")  # seeds.py's own "import run"
seed_table = import_script(REPO / "examples" / "quickstart" / "seeds.py").seed_table


def results(text_clean, m3p_clean, text_degraded, m3p_degraded):
    """One seed's results.json with two directions; arguments are (en-de, de-en) BLEU pairs."""
    def split(scores):
        return {pair: {"bleu": bleu} for pair, bleu in zip(("en-de", "de-en"), scores)}
    return {"text-only": {"test": split(text_clean), "test_degraded": split(text_degraded)},
            "m3p": {"test": split(m3p_clean), "test_degraded": split(m3p_degraded)}}


def test_mean_sd_and_range_over_seeds_by_hand():
    table = seed_table({
        1: results((99, 97), (98, 97), (30, 60), (40, 70)),
        2: results((100, 98), (90, 96), (32, 62), (38, 72)),
        3: results((98, 99), (95, 98), (28, 58), (42, 68)),
    }).splitlines()
    assert table[0] == ("| direction | text-only, clean | m3P, clean | m3P − text-only, clean | text-only, degraded "
                        "| m3P, degraded | m3P − text-only, degraded |")
    # en-de clean: text 99, 100, 98 -> mean 99, sd 1; m3P 98, 90, 95 -> mean 94.333, sd sqrt(16.333)=4.041;
    # margins -1, -10, -3 -> mean -4.667, sd sqrt(22.333)=4.726. Degraded: text 30, 32, 28 -> 30 ± 2;
    # m3P 40, 38, 42 -> 40 ± 2; margins 10, 6, 14 -> 10 ± 4.
    assert table[2] == ("| en-de | 99.0 ± 1.0 (98.0–100.0) | 94.3 ± 4.0 (90.0–98.0) | -4.7 ± 4.7 (-10.0–-1.0) "
                        "| 30.0 ± 2.0 (28.0–32.0) | 40.0 ± 2.0 (38.0–42.0) | 10.0 ± 4.0 (6.0–14.0) |")
    # average over the two directions per seed: text clean 98, 99, 98.5; m3P clean 97.5, 93, 96.5;
    # margins -0.5, -6, -2 -> mean -2.833, sd sqrt(8.083)=2.843
    assert table[4].startswith("| **average** | 98.5 ± 0.5 (98.0–99.0) | 95.7 ± 2.4 (93.0–97.5) "
                               "| -2.8 ± 2.8 (-6.0–-0.5) |")


def test_ablation_table_over_seeds_by_hand():
    import_script(REPO / "examples" / "quickstart" / "seeds.py")  # ablation.py's own "import seeds"
    ablation = import_script(REPO / "examples" / "quickstart" / "ablation.py")
    names = {name: pairs for _, models in ablation.ROWS for name, (_, pairs) in models.items()}

    def seed_results(offset):
        # every model scores 50 + offset on en-de and 60 + offset on de-en, clean; +1 degraded
        return {name: {split: {pair: {"bleu": (50 if pair == "en-de" else 60) + offset + bump}
                               for pair in ("en-de", "de-en") if pair in pairs}
                       for split, bump in (("test", 0), ("test_degraded", 1))}
                for name, pairs in names.items()}

    one = ablation.table(ablation.ROWS, {1: seed_results(0)}).splitlines()
    assert one[2] == "| (1) m3P | 50.0 | 60.0 | 51.0 | 61.0 |"
    # offsets 0, 2, 4 -> mean +2, sd 2: en-de clean 52 ± 2 (50–54)
    three = ablation.table(ablation.ROWS, {s: seed_results(2 * (s - 1)) for s in (1, 2, 3)}).splitlines()
    assert three[3] == ("| (1') (1), MMA outside MMCL | 52.0 ± 2.0 (50.0–54.0) | 62.0 ± 2.0 (60.0–64.0) "
                        "| 53.0 ± 2.0 (51.0–55.0) | 63.0 ± 2.0 (61.0–65.0) |")
    # row (5) takes en-de from the en-de bilingual model and de-en from the de-en one
    assert three[7].startswith("| (5) (4) - multilingual | 52.0 ± 2.0 (50.0–54.0) | 62.0 ± 2.0")
