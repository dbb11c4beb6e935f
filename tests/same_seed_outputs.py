"""Same seed, same outputs: a check for refactorings of the models and criterions.

Builds every model variant (encoder-decoder with each fusion, decoder-only with and without
images) at a fixed seed on a tiny synthetic data directory, and records its parameters, a
training-mode forward with MMCL (MDropNet draws, dropout, augmented-view negatives, an
unusable image), the m3p_loss value and a beam search. Run it once on the old code with
``--save`` and once on the new code with ``--compare``::

    git archive OLD | tar -x -C /tmp/old
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old python tests/same_seed_outputs.py --save /tmp/before.pt
    OMP_NUM_THREADS=1 python tests/same_seed_outputs.py --compare /tmp/before.pt

Every tensor must be bitwise equal, and the state-dict keys the same. (A tool, not a test:
pytest collects test_*.py only.)
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from fairseq import options, tasks
from fairseq.dataclass.configs import GenerationConfig
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import m3p_fairseq  # noqa: F401  (registers the task, models and criterion)
from m3p_fairseq.data.image_features import ImageFeatureWriter, read_image_ids
from preprocess.binarize import binarize
from preprocess.make_synthetic_corpus import make_corpus

VARIANTS = {
    **{f"encoder_decoder_{fusion}": ["--arch", "m3p_transformer_tiny", "--fusion", fusion]
       for fusion in ("cvlm", "concat", "gated", "selective", "none")},
    "encoder_decoder_image_layers": ["--arch", "m3p_transformer_tiny", "--fusion", "cvlm",
                                     "--image-encoder-layers", "1", "--mmcl-learn-temperature"],
    "decoder_only_prefix": ["--arch", "m3p_decoder_only_tiny", "--decoder-layers", "2", "--fusion", "prefix"],
    "decoder_only_none": ["--arch", "m3p_decoder_only_tiny", "--decoder-layers", "2", "--fusion", "none"],
}


def make_data(root: Path) -> Path:
    raw, data = root / "raw", root / "data-bin"
    make_corpus(raw, num_train=60, num_valid=12, num_test=40, langs=["en", "de", "fr", "cs"], image_size=48, seed=3)
    binarize(raw, data, [("en", "de"), ("de", "en"), ("en", "fr")], ["train", "valid", "test"],
             spm_vocab_size=200, spm_user_defined_symbols=["[MASK]"])
    ids = [i for split in ("train", "valid", "test") for i in read_image_ids(raw / f"{split}.image_ids")]
    rng = np.random.default_rng(0)
    writer = ImageFeatureWriter(data / "image_features.h5", ids, 4, 16, "float32")
    writer.write(rng.standard_normal((len(ids), 4, 16)).astype("float32"),
                 rng.standard_normal((len(ids), 16)).astype("float32"))
    writer.close()
    return data


def run_variant(data: Path, extra) -> dict:
    argv = [str(data), "--task", "multimodal_translation", "--lang-pairs", "en-de,de-en,en-fr",
            "--source-lang", "en", "--target-lang", "de", "--criterion", "m3p_loss", "--mmcl-weight", "0.5",
            "--label-smoothing", "0.1", *extra]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), input_args=argv))
    torch.manual_seed(0)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    task.load_dataset("test")
    dataset = task.dataset("test")
    out = {"state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
    batch = dataset.collater([dataset[i] for i in range(8)])
    net_input = dict(batch["net_input"])
    reads_images = "fusion" in cfg.model and cfg.model.fusion != "none"
    if reads_images:
        net_input["image_negative_global"] = net_input["image_global"].flip(0)
        net_input["image_usable"] = torch.tensor([True, True, False, True, True, True, True, True])
    model.train()
    torch.manual_seed(1)
    logits, extra_out = model(**net_input, contrastive=reads_images)
    out["train_logits"] = logits.detach()
    out.update({f"train_{k}": v.detach() for k, v in extra_out.items() if k.startswith("mmcl_")})
    criterion = task.build_criterion(cfg.criterion) if reads_images else None
    if criterion is not None:
        torch.manual_seed(2)
        loss, _, _ = criterion(model, {**batch, "net_input": net_input})
        out["criterion_loss"] = loss.detach()
    model.eval()
    generator = task.build_generator([model], GenerationConfig(beam=4, max_len_b=10))
    with torch.no_grad():
        hypotheses = task.inference_step(generator, [model], dataset.collater([dataset[i] for i in range(12)]))
    for i, hypothesis in enumerate(hypotheses):
        out[f"beam_{i}_tokens"] = hypothesis[0]["tokens"]
        out[f"beam_{i}_scores"] = hypothesis[0]["positional_scores"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path)
    mode.add_argument("--compare", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        results = {name: run_variant(data, extra) for name, extra in VARIANTS.items()}
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} variants to {args.save}")
        return
    before = torch.load(args.compare)
    failures = 0
    for name, now in results.items():
        failures_before = failures
        then = before[name]
        if list(now["state_dict"]) != list(then["state_dict"]):
            print(f"{name}: state-dict keys differ: {sorted(set(now['state_dict']) ^ set(then['state_dict']))}")
            failures += 1
        for key in sorted(set(now) | set(then)):
            a, b = now.get(key), then.get(key)
            tensors = a.items() if isinstance(a, dict) else [(key, a)]
            for sub, value in tensors:
                old = b.get(sub) if isinstance(b, dict) else b
                if value is None or old is None or not torch.equal(value, old):
                    print(f"{name}: {sub} differs")
                    failures += 1
        print(f"{name}: {'identical' if failures == failures_before else 'DIFFERENT'} ({len(now)} outputs)")
    print("ALL IDENTICAL" if failures == 0 else f"{failures} DIFFERENCES")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
