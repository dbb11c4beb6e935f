"""examples/pretraining/translation.py: what M3P pre-training brings to multimodal MT. Its pure
parts against hand-computed values, and the whole recipe at toy size through the real command
lines (fairseq-train pre-training x3 -> scripts/pretraining_to_translation.py -> preprocess.subsample
-> fairseq-train multimodal_translation -> scripts/evaluate.py)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers import REPO, import_script

import_script(REPO / "examples" / "pretraining" / "synthetic_data.py")  # the recipe's sibling import
recipe = import_script(REPO / "examples" / "pretraining" / "translation.py")

PAIRS = ["en-de", "de-en", "en-fr", "fr-en"]
TOY = ["--num-train", 40, "--num-valid", 8, "--num-test", 12, "--image-size", 32, "--spm-vocab-size", 150,
       "--embed-dim", 32, "--layers", 1, "--pretraining-updates", 4, "--pretraining-batch-size", 4,
       "--fractions", "0.5,1", "--ablation-fraction", 0.5, "--curve-fractions", "0.5,1", "--mmt-updates", 4,
       "--patience", 1, "--max-mmt-updates", 6, "--validate-interval-updates", 2, "--max-tokens", 400,
       "--warmup-updates", 2, "--beam", 2]
SCRATCH, ALL = "from scratch", "pre-trained, all objectives"
NO_UNDERSTANDING = "pre-trained without understanding (xMLM/MMLM/MRM/VLM)"
NO_GENERATION = "pre-trained without generation (xDAE/IC/DIC)"


# ---- pure parts ---------------------------------------------------------------------------------
def test_subset_sizes_and_names():
    assert recipe.training_sentences(2000, 0.1) == 200
    assert recipe.training_sentences(2000, 0.25) == 500
    assert recipe.training_sentences(40, 0.5) == 20
    assert recipe.training_sentences(3, 0.1) == 1  # never an empty training set
    assert [recipe.percent(f) for f in (0.1, 0.25, 0.5, 1.0)] == ["10pct", "25pct", "50pct", "100pct"]
    assert [recipe.percent(f) for f in (0.01, 0.025)] == ["1pct", "2.5pct"]
    assert [recipe.share_label(f) for f in (0.025, 0.1, 1.0)] == ["2.5%", "10%", "100%"]  # not '2%'
    with pytest.raises(ValueError, match="--curve-fractions 0.5,1.5: every share must be in"):
        recipe.fractions("0.5,1.5", "--curve-fractions")


def test_every_table_row_has_one_run():
    args = SimpleNamespace(fractions=[0.1, 1.0], ablation_fraction=0.1, curve_fractions=[0.1, 0.25, 0.5, 1.0])
    runs = recipe.mmt_runs(args)
    # Table 1 (4 rows), Table 2 (4 rows, two of them Table 1's 10 % runs), Table 3 (8 rows)
    assert runs == {
        "scratch-10pct": ("scratch", 0.1, False), "all-10pct": ("all", 0.1, False),
        "scratch-100pct": ("scratch", 1.0, False), "all-100pct": ("all", 1.0, False),
        "no-understanding-10pct": ("no-understanding", 0.1, False),
        "no-generation-10pct": ("no-generation", 0.1, False),
        "scratch-10pct-to-best": ("scratch", 0.1, True), "all-10pct-to-best": ("all", 0.1, True),
        "scratch-25pct-to-best": ("scratch", 0.25, True), "all-25pct-to-best": ("all", 0.25, True),
        "scratch-50pct-to-best": ("scratch", 0.5, True), "all-50pct-to-best": ("all", 0.5, True),
        "scratch-100pct-to-best": ("scratch", 1.0, True), "all-100pct-to-best": ("all", 1.0, True)}
    assert recipe.PRETRAININGS == {"all": ("xmlm", "mmlm", "mrm", "vlm", "xdae", "ic", "dic"),
                                   "no-understanding": ("xdae", "ic", "dic"),
                                   "no-generation": ("xmlm", "mmlm", "mrm", "vlm")}


def test_fig5_is_drawn_on_a_log_axis_labelled_with_the_shares(monkeypatch, tmp_path):
    from m3p_fairseq.evaluation import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: drawn.append(figure))
    curve = [(0.01, 40.0), (0.025, 50.0), (0.1, 70.0), (1.0, 90.0)]
    other = [(0.05, 60.0), (1.0, 95.0)]  # another system measured at another share
    figures.plot_curves({"from scratch": curve, "pre-trained": other}, tmp_path / "fig.png", "data (%)",
                        log_x=True)
    axes = drawn[0].axes[0]
    assert axes.get_xscale() == "log"
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["1", "2.5", "5", "10", "100"]
    assert list(axes.lines[0].get_xdata()) == [1.0, 2.5, 10.0, 100.0]


def test_bleu_table_layout():
    rows = [(["from scratch", "10%"], {"en-de": 10.0, "de-en": 21.0, "fr-en": 99.0}, ["120"]),
            (["pre-trained", "10%"], {"en-de": 30.3, "de-en": 40.1}, ["60"])]
    # averages by hand: (10 + 21) / 2 = 15.5, (30.3 + 40.1) / 2 = 35.2; fr-en is not a column
    assert recipe.bleu_table(["initialisation", "data"], rows, ["en-de", "de-en"], ["best at update"]) == (
        "| initialisation | data | en-de | de-en | average | best at update |\n"
        "|---|---|---:|---:|---:|---:|\n"
        "| from scratch | 10% | 10.0 | 21.0 | 15.5 | 120 |\n"
        "| pre-trained | 10% | 30.3 | 40.1 | 35.2 | 60 |")


def test_lang_pairs_without_english_are_refused(tmp_path):
    with pytest.raises(SystemExit) as stop:
        recipe.main(["--work-dir", str(tmp_path), "--lang-pairs", "de-fr"])
    assert stop.value.code == 2
    assert not any(tmp_path.iterdir())  # refused before any work


# ---- the recipe through the real command lines -------------------------------------------------
def run_recipe(work):
    result = subprocess.run([sys.executable, "examples/pretraining/translation.py", "--work-dir", work,
                             *map(str, TOY)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    work = tmp_path_factory.mktemp("pretraining_mmt")
    return work, run_recipe(work)


def table(text: str, title: str):
    """The rows (lists of cells) of the markdown table under the heading that starts with ``title``."""
    section = text[text.index(f"## {title}"):].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| initialisation | training data (per direction) | en-de | de-en | en-fr | fr-en | "
                               "average |")
    return [line[2:-2].split(" | ") for line in lines[1:]]


def test_three_tables_have_every_row_and_direction(ran):
    work, stdout = ran
    text = (work / "tables.md").read_text()
    assert text in stdout
    half, full = "50% (20 sentences)", "100% (40 sentences)"  # 40 training scenes
    table1, table2 = table(text, "Table 1"), table(text, "Table 2")
    table3 = table(text, "Table 3")
    assert [row[:2] for row in table1] == [[SCRATCH, half], [ALL, half], [SCRATCH, full], [ALL, full]]
    assert [row[:2] for row in table2] == [[SCRATCH, half], [ALL, half], [NO_UNDERSTANDING, half],
                                           [NO_GENERATION, half]]
    assert [row[:2] for row in table3] == [[SCRATCH, half], [SCRATCH, full], [ALL, half], [ALL, full]]
    results = json.loads((work / "results.json").read_text())
    assert len(results) == 10  # Table 2 reuses Table 1's two 50 % runs
    for rows in (table1, table2, table3):
        for row in rows:
            bleu = [float(cell) for cell in row[2:7]]
            assert all(0 <= b <= 100 for b in bleu)
            assert bleu[4] == pytest.approx(sum(bleu[:4]) / 4, abs=0.051)
    for name, entry in results.items():
        assert sorted(entry["bleu"]) == sorted(PAIRS), name
        scored = json.loads((work / "scores" / f"{name}.json").read_text())
        assert all(scored[pair]["signature"].startswith("nrefs:1|case:mixed") for pair in PAIRS)
        assert all(len(scored[pair]["hypotheses"]) == 12 for pair in PAIRS)  # the whole test split
    for row in table3:  # the checkpoint of the best validation loss, within the cap of 6 updates
        best, stopped = int(row[7]), int(row[8])
        assert 2 <= best <= stopped <= 6
    assert (work / "fig5_low_resource.png").read_bytes()[:4] == b"\x89PNG"


def test_training_shares_are_subsets_of_the_training_split(ran):
    from m3p_fairseq.data.image_features import read_image_ids

    work, _ = ran
    half = read_image_ids(work / "data-50pct" / "train.image_ids")
    assert len(half) == 20 and set(half) <= set(read_image_ids(work / "data-bin" / "train.image_ids"))
    assert "data-50pct" in (work / "train-scratch-50pct.log").read_text()
    assert "data-50pct" not in (work / "train-scratch-100pct.log").read_text()


def test_pretrained_rows_start_from_the_transferred_weights(ran):
    work, _ = ran

    def state(path):
        return torch.load(path, map_location="cpu", weights_only=True)

    for variant in ("all", "no-understanding", "no-generation"):
        pre = state(work / "checkpoints" / f"pretraining-{variant}" / "checkpoint_last.pt")["model"]
        init = state(work / "init" / f"{variant}.pt")
        q, k, v = pre["generation_encoder.layers.0.self_attn.in_proj_weight"].chunk(3)
        assert torch.equal(init["model"]["encoder.text_encoder.layers.0.self_attn.q_proj.weight"], q)
        assert torch.equal(init["model"]["encoder.text_encoder.layers.0.self_attn.v_proj.weight"], v)
        assert torch.equal(init["model"]["decoder.layers.0.fc2.weight"], pre["generation_decoder.layers.0.linear2.weight"])
        assert torch.equal(init["model"]["decoder.embed_tokens.weight"], pre["embeddings.tokens.weight"])
        assert init["m3p_pretraining_transfer"]["from"].endswith(
            f"pretraining-{variant}/checkpoint_last.pt")
    # each pre-training trained only its objectives (validation logs one loss per objective)
    valid = {variant: [line for line in (work / f"train-pretraining-{variant}.log").read_text().splitlines()
                       if "valid on 'valid' subset" in line][-1] for variant in ("no-understanding", "no-generation")}
    assert "xdae_loss" in valid["no-understanding"] and "xmlm_loss" not in valid["no-understanding"]
    assert "xmlm_loss" in valid["no-generation"] and "ic_loss" not in valid["no-generation"]
    # fine-tuning loaded the initial checkpoint of its row; the scratch rows loaded none
    for name, variant in (("all-50pct", "all"), ("all-100pct-to-best", "all"),
                          ("no-understanding-50pct", "no-understanding"), ("no-generation-50pct", "no-generation")):
        assert f"Loaded checkpoint {work / 'init' / variant}.pt (epoch 1 @ 0 updates)" in (
            work / f"train-{name}.log").read_text()
    for name in ("scratch-50pct", "scratch-100pct", "scratch-50pct-to-best"):
        assert "/init/" not in (work / f"train-{name}.log").read_text()


def test_a_second_run_finds_everything_done(ran):
    work, _ = ran
    before = (work / "scores" / "all-50pct.json").stat().st_mtime_ns
    stdout = run_recipe(work)
    assert "fairseq-train" not in stdout and "evaluate.py" not in stdout and "pretraining_to_translation" not in stdout
    assert (work / "scores" / "all-50pct.json").stat().st_mtime_ns == before
