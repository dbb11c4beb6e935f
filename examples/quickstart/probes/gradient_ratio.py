"""How hard does each term of Eq. 12 pull? The gradient norm (over all parameters) of the
translation loss L_m and of the weighted contrastive loss lambda * L_c of a trained m3p_loss
checkpoint, each normalised per target token as fairseq-train does, on training batches.

    python examples/quickstart/probes/gradient_ratio.py --checkpoint CKPT \\
        [--data work/quickstart/data-bin] [--batches 10]

The batches are the checkpoint's own training batches (its --max-tokens, seed, MMA and
MDropNet draws, train mode); lambda is the checkpoint's --mmcl-weight. With --clip-norm 1.0 a
term much larger than the other takes most of every clipped update.
"""

import argparse
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def gradient_norm(loss, parameters) -> float:
    import torch

    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None) ** 0.5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint trained with --criterion m3p_loss")
    parser.add_argument("--data", type=Path, default=REPO / "work" / "quickstart" / "data-bin")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)
    import torch
    from fairseq import checkpoint_utils, utils

    import m3p_fairseq  # noqa: F401  (registers the task, model and criterion)

    logging.disable(logging.WARNING)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(args.checkpoint)], arg_overrides={"data": str(args.data)})
    model = models[0].train()
    criterion = task.build_criterion(cfg.criterion)
    if not hasattr(criterion, "contrastive_loss") or getattr(model, "contrastive_head", None) is None:
        raise SystemExit(f"{args.checkpoint}: trained with --criterion {cfg.criterion._name} and no MMCL head; "
                         "needs --criterion m3p_loss and a model that reads images")
    task.load_dataset(cfg.dataset.train_subset, epoch=1)
    batches = task.get_batch_iterator(
        dataset=task.dataset(cfg.dataset.train_subset), max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple, seed=cfg.common.seed, epoch=1,
    ).next_epoch_itr(shuffle=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(cfg.common.seed)
    translation, contrastive = [], []
    for number, sample in enumerate(batches):
        if number == args.batches:
            break
        net_output = model(**sample["net_input"], contrastive=True)
        tokens = sample["ntokens"]
        ce, _ = criterion.compute_loss(model, net_output, sample)
        mmcl_term, _ = criterion.contrastive_loss(net_output[1], tokens)
        translation.append(gradient_norm(ce / tokens, parameters))
        contrastive.append(gradient_norm(mmcl_term / tokens, parameters))
    mean_translation, mean_contrastive = sum(translation) / len(translation), sum(contrastive) / len(contrastive)
    print(f"gradient norm over {len(translation)} training batches, lambda = {criterion.mmcl_weight}: "
          f"translation {mean_translation:.3f}, lambda * MMCL {mean_contrastive:.3f}, "
          f"ratio {mean_contrastive / mean_translation:.2f}")
    return mean_translation, mean_contrastive


if __name__ == "__main__":
    main()
