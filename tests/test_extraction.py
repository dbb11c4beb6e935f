"""Feature extraction: bad images, backbones loaded from local checkpoints, per-backbone preprocessing."""

import argparse
import io
import logging
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors.torch
import timm
import timm.data
import torch
from PIL import Image

from m3p_fairseq.data.image_features import ImageFeatureStore
from m3p_fairseq.serialization import allow_fairseq_checkpoint_globals
from preprocess import extract_image_features
from preprocess.extract_image_features import (
    BadImagesError,
    CheckpointError,
    ImageFolder,
    build_backbone,
    collate_readable,
    extract,
    patch_and_global_features,
)

CLIP_VIT = "vit_base_patch32_clip_224"
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}  # 64 px input: 2 x 2 patches of 32 px
TINY_VIT = dict(backbone=CLIP_VIT, model_kwargs=TINY, image_size=64)
GOOD = [f"img{i}.png" for i in range(5)]
MISSING, CORRUPT = "missing.jpg", "corrupt.jpg"


def picture(seed: int, size=(48, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_ids(path, ids):
    path.write_text("\n".join(ids) + "\n")
    return path


@pytest.fixture
def images_dir(tmp_path):
    """Five good images and a corrupt .jpg; ``missing.jpg`` has no file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image_id in enumerate(GOOD):
        picture(i).save(folder / image_id)
    (folder / CORRUPT).write_bytes(b"\xff\xd8 these are not the bytes of a JPEG" * 4)
    return folder


def run_extract(images_dir, id_file, output, **kwargs):
    options = dict(random_init_seed=0, batch_size=2, dtype="float32", device="cpu", **TINY_VIT)
    return extract(images_dir, [id_file], output, **{**options, **kwargs})


def datasets(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}


def report_rows(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "image_id\tpath\treason"
    return [line.split("\t") for line in lines[1:]]


# ---------------------------------------------------------------------------------------------
# expected features, computed here with timm and PIL only (not with the code under test)

OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PIL_RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def eval_input(path, size, crop_pct, interpolation, mean, std) -> torch.Tensor:
    """timm's eval preprocessing written out: the shorter side to floor(size / crop_pct) keeping the
    aspect ratio, a centred size x size crop, [0, 1], then (x - mean) / std per channel."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    short = math.floor(size / crop_pct)
    resized = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    image = image.resize(resized, PIL_RESAMPLING[interpolation])
    left, top = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return torch.from_numpy(((pixels - np.array(mean)) / np.array(std)).astype(np.float32).transpose(2, 0, 1).copy())


def timm_patches_and_global(model, images):
    """Patch tokens and global vector from timm's forward_features: a ViT's tokens after its class
    token and that class token (CLIP ViTs pool by it); a CNN's map flattened and its average."""
    with torch.no_grad():
        features = model.forward_features(images)
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2), features.mean(dim=(2, 3))
    return features[:, 1:], features[:, 0]


# ---------------------------------------------------------------------------------------------
# bad images

def test_unreadable_images_become_markers_without_stopping_the_loader(tmp_path):
    good = io.BytesIO()
    picture(0).save(good, "JPEG")
    files = {"good.jpg": good.getvalue(), "garbage.jpg": b"not an image at all",
             "truncated.jpg": good.getvalue()[: len(good.getvalue()) // 2], "empty.jpg": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ids = list(files) + ["absent.jpg"]
    loader = torch.utils.data.DataLoader(ImageFolder(tmp_path, ids, lambda image: torch.ones(3, 4, 4)),
                                         batch_size=5, num_workers=2, collate_fn=collate_readable)
    (batch, usable, unreadable), = list(loader)
    assert batch.shape == (1, 3, 4, 4) and usable.tolist() == [True, False, False, False, False]
    reasons = {image.image_id: image.reason for image in unreadable}
    assert reasons["garbage.jpg"].startswith("undecodable: cannot identify image file")
    assert reasons["truncated.jpg"].startswith("undecodable: image file is truncated")
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["absent.jpg"] == "missing"
    assert [image.path for image in unreadable] == [str(tmp_path / i) for i in ids[1:]]


def test_bad_images_fail_the_run_then_resume_flagged(images_dir, tmp_path, caplog):
    ids = [GOOD[0], MISSING, GOOD[1], GOOD[2], CORRUPT, GOOD[3], GOOD[4]]
    id_file = write_ids(tmp_path / "ids", ids)
    output, report = tmp_path / "f.h5", tmp_path / "f.h5.bad_images.tsv"
    caplog.set_level(logging.INFO, logger=extract_image_features.logger.name)
    with pytest.raises(BadImagesError) as failure:
        run_extract(images_dir, id_file, output)
    message = str(failure.value)
    assert message.startswith("2 of 7 images are missing or cannot be decoded: 'missing.jpg' (missing), "
                              "'corrupt.jpg' (undecodable: cannot identify image file")
    assert str(report) in message and "--skip-bad-images" in message
    assert "1 of 7 images are not in" in caplog.text  # the missing one was known before extracting
    assert not output.exists() and (tmp_path / "f.h5.partial").exists()
    partial = datasets(tmp_path / "f.h5.partial")
    assert partial["usable"].tolist() == [i not in (1, 4) for i in range(7)]
    assert not partial["patches"][[1, 4]].any() and partial["patches"][[0, 2, 3, 5, 6]].any(axis=(1, 2)).all()
    assert [row[:2] for row in report_rows(report)] == [[MISSING, str(images_dir / MISSING)],
                                                        [CORRUPT, str(images_dir / CORRUPT)]]

    caplog.clear()
    assert run_extract(images_dir, id_file, output, skip_bad_images=True) == 7
    assert "resuming" in caplog.text and "at image 7 of 7" in caplog.text  # nothing extracted again
    assert "flagged 2 of 7 images as unusable" in caplog.text
    assert len(report_rows(report)) == 2
    store = ImageFeatureStore(output)
    assert store.usable.tolist() == [i not in (1, 4) for i in range(7)]
    assert store.num_unusable == 2 and store.attrs["num_unusable"] == 2
    flagged = datasets(output)
    for row in (1, 4):
        assert not flagged["patches"][row].any() and not flagged["global"][row].any()

    # the other rows are those of an extraction over the good images only
    run_extract(images_dir, write_ids(tmp_path / "good_ids", GOOD), tmp_path / "clean.h5")
    clean = datasets(tmp_path / "clean.h5")
    assert report_rows(tmp_path / "clean.h5.bad_images.tsv") == [] and clean["usable"].all()
    good_rows = [i for i in range(7) if i not in (1, 4)]
    for name in ("patches", "global"):
        np.testing.assert_allclose(flagged[name][good_rows], clean[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_skip_bad_images_flags_views_too(images_dir, tmp_path):
    id_file = write_ids(tmp_path / "ids", [GOOD[0], CORRUPT])
    run_extract(images_dir, id_file, tmp_path / "f.h5", skip_bad_images=True, augmented_views=2)
    stored = datasets(tmp_path / "f.h5")
    assert stored["usable"].tolist() == [True, False]
    for name in ("patches", "global", "view_patches", "view_global"):  # same batch, yet zero
        assert stored[name][0].any() and not stored[name][1].any(), name


def test_fixed_image_is_extracted_when_the_run_is_repeated(images_dir, tmp_path, monkeypatch):
    id_file = write_ids(tmp_path / "ids", [GOOD[0], CORRUPT, GOOD[1]])
    with pytest.raises(BadImagesError, match="1 of 3 images"):
        run_extract(images_dir, id_file, tmp_path / "f.h5")
    picture(7).save(images_dir / CORRUPT, "JPEG")  # the user replaces the broken file

    extracted = []
    real_features = extract_image_features.backbone_features

    def counting_features(model, images, device):
        extracted.append(len(images))
        return real_features(model, images, device)

    monkeypatch.setattr(extract_image_features, "backbone_features", counting_features)
    assert run_extract(images_dir, id_file, tmp_path / "f.h5") == 3
    assert extracted == [1]  # only the retried image went through the backbone
    assert report_rows(tmp_path / "f.h5.bad_images.tsv") == []
    monkeypatch.undo()
    run_extract(images_dir, id_file, tmp_path / "clean.h5")
    fixed, clean = datasets(tmp_path / "f.h5"), datasets(tmp_path / "clean.h5")
    assert fixed["usable"].all()
    np.testing.assert_allclose(fixed["patches"], clean["patches"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, data", [
    ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"x" * 200),  # a PNG signature, then no valid chunk
    ("bad_crc.png", "flip a byte of the header chunk"),
    ("truncated.gif", "the first half of a GIF"),
])
def test_skip_bad_images_flags_decode_errors(tmp_path, name, data):
    encoded = io.BytesIO()
    picture(1).save(encoded, name.rsplit(".", 1)[1].replace("gif", "GIF").replace("png", "PNG"))
    encoded = encoded.getvalue()
    if data == "flip a byte of the header chunk":
        data = encoded[:20] + bytes([encoded[20] ^ 0xFF]) + encoded[21:]
    elif data == "the first half of a GIF":
        data = encoded[: len(encoded) // 2]
    folder = tmp_path / "images"
    folder.mkdir()
    picture(0).save(folder / GOOD[0])
    (folder / name).write_bytes(data)
    run_extract(folder, write_ids(tmp_path / "ids", [GOOD[0], name]), tmp_path / "f.h5", skip_bad_images=True)
    assert ImageFeatureStore(tmp_path / "f.h5").usable.tolist() == [True, False]
    [(image_id, _, reason)] = report_rows(tmp_path / "f.h5.bad_images.tsv")
    assert image_id == name and reason.startswith("undecodable: ")


def convert_with_a_bug(image, mode):
    raise TypeError("convert() got an unexpected keyword argument (a bug, not a bad image)")


class NotAnImage:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def unreadable(path):
    raise PermissionError(13, "Permission denied", str(path))  # the tests run as root: chmod would not do


@pytest.mark.parametrize("owner, name, replacement, error", [
    (Image.Image, "convert", convert_with_a_bug, TypeError),
    (Image, "open", lambda fp: NotAnImage(), AttributeError),  # no convert(): as if our code passed the wrong object
    (Path, "read_bytes", unreadable, PermissionError),  # no bad image: the user must fix the permissions
])
def test_skip_bad_images_does_not_hide_bugs(images_dir, tmp_path, monkeypatch, owner, name, replacement, error):
    monkeypatch.setattr(owner, name, replacement)
    id_file = write_ids(tmp_path / "ids", GOOD[:3])
    with pytest.raises(error):
        run_extract(images_dir, id_file, tmp_path / "f.h5", skip_bad_images=True)
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.bad_images.tsv").exists()
    monkeypatch.undo()
    # what was written before the bug stays and is resumed
    assert run_extract(images_dir, id_file, tmp_path / "f.h5") == 3
    assert ImageFeatureStore(tmp_path / "f.h5").usable.all()


def test_cli_fails_on_bad_images_unless_told_to_skip_them(images_dir, tmp_path, capsys):
    id_file = write_ids(tmp_path / "ids", [GOOD[0], MISSING])
    common = ["--images-dir", images_dir, "--image-ids", id_file, "--output", tmp_path / "f.h5",
              "--backbone", "vit_tiny_patch16_224", "--random-init-seed", 0, "--image-size", 32]
    with pytest.raises(SystemExit) as failure:
        extract_image_features.main([str(a) for a in common])
    assert failure.value.code == 1
    error = capsys.readouterr().err
    assert "error: 1 of 2 images are missing or cannot be decoded: 'missing.jpg' (missing)" in error
    assert "usage:" not in error
    extract_image_features.main([str(a) for a in common + ["--skip-bad-images"]])
    assert ImageFeatureStore(tmp_path / "f.h5").usable.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# backbones from local checkpoints

def tiny_timm_vit(seed=1, **overrides):
    torch.manual_seed(seed)
    return timm.create_model(CLIP_VIT, pretrained=False, num_classes=10, img_size=64, **{**TINY, **overrides})


def backbone_from(checkpoint, **overrides):
    return build_backbone(CLIP_VIT, checkpoint, None, 64, {**TINY, **overrides})


@pytest.mark.parametrize("layout", ["pth", "safetensors", "pth_training_checkpoint"])
def test_timm_checkpoint_loads_every_backbone_weight(tmp_path, layout):
    source = tiny_timm_vit()
    state = source.state_dict()
    path = tmp_path / ("weights.safetensors" if layout == "safetensors" else "weights.pth")
    if layout == "safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save({"model": state, "epoch": 3} if layout == "pth_training_checkpoint" else state, path)
    model = backbone_from(path)
    loaded = model.state_dict()
    assert loaded.keys() == {key for key in state if not key.startswith("head.")}  # classifier dropped
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_fairseq_checkpoints_still_load_after_a_timm_checkpoint(tmp_path):
    # timm's loader allow-lists argparse.Namespace only for its own load and then removes it,
    # which also dropped the plugin's registration: a later fairseq checkpoint failed to load
    torch.save(tiny_timm_vit().state_dict(), tmp_path / "weights.pth")
    backbone_from(tmp_path / "weights.pth")
    torch.save({"args": argparse.Namespace(arch="m3p_transformer_tiny")}, tmp_path / "checkpoint.pt")
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["args"].arch == "m3p_transformer_tiny"


def openai_clip_state_dict(width=32, grid=2, patch=32, out_dim=16, seed=0):
    """The layout of OpenAI's CLIP (and open_clip's own ViTs), one residual block, with a text tower."""
    torch.manual_seed(seed)
    block = "visual.transformer.resblocks.0."
    shapes = {
        "visual.conv1.weight": (width, 3, patch, patch), "visual.class_embedding": (width,),
        "visual.positional_embedding": (grid * grid + 1, width),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
        block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
        block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
        block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
        block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
        block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,), "visual.proj": (width, out_dim),
        # the text tower, which the image backbone must ignore
        "token_embedding.weight": (50, out_dim), "transformer.resblocks.0.attn.in_proj_weight": (3 * out_dim, out_dim),
        "ln_final.weight": (out_dim,), "text_projection": (out_dim, out_dim), "logit_scale": (),
    }
    return {key: torch.randn(shape) for key, shape in shapes.items()}


def test_openai_clip_checkpoint_lands_in_the_timm_vit(tmp_path):
    clip = openai_clip_state_dict()
    torch.save(clip, tmp_path / "clip.pt")
    model = backbone_from(tmp_path / "clip.pt")
    block, visual = model.blocks[0], "visual.transformer.resblocks.0."
    pairs = {
        "patch_embed.proj.weight": clip["visual.conv1.weight"],
        "cls_token": clip["visual.class_embedding"][None, None],
        "pos_embed": clip["visual.positional_embedding"][None],
        "norm_pre.weight": clip["visual.ln_pre.weight"],
        "blocks.0.norm1.bias": clip[visual + "ln_1.bias"],
        "blocks.0.attn.qkv.weight": clip[visual + "attn.in_proj_weight"],
        "blocks.0.attn.qkv.bias": clip[visual + "attn.in_proj_bias"],
        "blocks.0.attn.proj.weight": clip[visual + "attn.out_proj.weight"],
        "blocks.0.mlp.fc1.weight": clip[visual + "mlp.c_fc.weight"],
        "blocks.0.mlp.fc2.bias": clip[visual + "mlp.c_proj.bias"],
        "norm.weight": clip["visual.ln_post.weight"],
        "norm.bias": clip["visual.ln_post.bias"],
    }
    loaded = model.state_dict()
    for key, expected in pairs.items():
        assert torch.equal(loaded[key], expected), key
    assert torch.equal(block.attn.qkv.weight[:32], clip[visual + "attn.in_proj_weight"][:32])  # q first, as in CLIP
    # the projection visual.proj is CLIP's head; the stored global vector is the pre-logits one
    assert isinstance(model.head, torch.nn.Identity)
    _, global_vector = patch_and_global_features(model, torch.zeros(1, 3, 64, 64))
    assert global_vector.shape == (1, 32)


def test_openai_clip_checkpoint_through_extract(images_dir, tmp_path):
    torch.save(openai_clip_state_dict(), tmp_path / "clip.pt")
    id_file = write_ids(tmp_path / "ids", GOOD[:2])
    run_extract(images_dir, id_file, tmp_path / "f.h5", random_init_seed=None, checkpoint=tmp_path / "clip.pt")
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert (store.num_patches, store.feature_dim) == (4, 32)
    assert store.attrs["checkpoint"] == str(tmp_path / "clip.pt") and '"embed_dim": 32' in store.attrs["model_kwargs"]
    # timm itself loads the OpenAI layout, as pretrained weights from a local file
    model = timm.create_model(CLIP_VIT, pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "clip.pt")},
                              num_classes=0, img_size=64, **TINY).eval()
    allow_fairseq_checkpoint_globals()  # timm's loader dropped them (see the test above)
    # --image-size 64: the whole image resized to 64 x 64 (crop_pct 1), CLIP's bicubic and normalisation
    images = torch.stack([eval_input(images_dir / i, 64, 1.0, "bicubic", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
                          for i in GOOD[:2]])
    patches, global_vectors = timm_patches_and_global(model, images)
    for row in range(2):
        torch.testing.assert_close(store.read(row)[0], patches[row], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(store.read(row)[1], global_vectors[row], rtol=1e-5, atol=1e-5)


def test_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_timm_vit().state_dict(), checkpoint)
    where = rf"checkpoint {checkpoint} does not fit backbone {CLIP_VIT}: "
    with pytest.raises(CheckpointError, match=where + r"\d+ tensor\(s\) of another shape: cls_token "
                                              r"\(checkpoint \[1, 1, 32\], backbone \[1, 1, 48\]\)"):
        backbone_from(checkpoint, embed_dim=48)
    # timm loads non-strictly once the classifier is dropped; a backbone weight left random is an error
    with pytest.raises(CheckpointError, match=where + r"12 backbone weight\(s\) missing from the checkpoint: "
                                              r"blocks\.1\.norm1\.weight, .*\(7 more\)"):
        backbone_from(checkpoint, depth=2)
    torch.save(tiny_timm_vit(depth=2).state_dict(), checkpoint)
    with pytest.raises(CheckpointError, match=where + r"12 checkpoint weight\(s\) the backbone has no place for: "
                                              r"blocks\.1\."):
        backbone_from(checkpoint)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*TorchScript archive:UserWarning")
def test_torchscript_checkpoint_gets_a_hint(tmp_path):
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(CheckpointError, match=r"ViT-B-32\.pt into backbone .*: it is a TorchScript archive .*"
                                              r"torch\.jit\.load"):
        backbone_from(tmp_path / "ViT-B-32.pt")


def test_cli_reports_a_checkpoint_mismatch_without_usage(images_dir, tmp_path, capsys):
    checkpoint = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), checkpoint)
    with pytest.raises(SystemExit) as failure:
        extract_image_features.main([str(a) for a in [
            "--images-dir", images_dir, "--image-ids", write_ids(tmp_path / "ids", GOOD[:1]),
            "--output", tmp_path / "f.h5", "--backbone", "resnet34", "--checkpoint", checkpoint]])
    assert failure.value.code == 1
    error = capsys.readouterr().err
    assert f"checkpoint {checkpoint} does not fit backbone resnet34: 80 backbone weight(s) missing" in error
    assert "usage:" not in error and not (tmp_path / "f.h5.partial").exists()


# ---------------------------------------------------------------------------------------------
# preprocessing per backbone

@pytest.mark.parametrize("backbone, model_kwargs, expected_mean", [
    (CLIP_VIT, TINY, OPENAI_CLIP_MEAN), ("resnet18", {}, (0.485, 0.456, 0.406))])
def test_preprocessing_is_timms_config_of_the_backbone(images_dir, tmp_path, backbone, model_kwargs, expected_mean):
    """No --image-size: the backbone's own input size, mean, std and crop, recorded in the attrs."""
    torch.manual_seed(3)
    source = timm.create_model(backbone, pretrained=False, num_classes=10, **model_kwargs).eval()
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    id_file = write_ids(tmp_path / "ids", GOOD[:2])
    run_extract(images_dir, id_file, tmp_path / "f.h5", backbone=backbone, model_kwargs=model_kwargs or None,
                image_size=None, random_init_seed=None, checkpoint=tmp_path / "weights.pth")
    store = ImageFeatureStore(tmp_path / "f.h5")
    config = source.pretrained_cfg  # the default tag's preprocessing, as timm states it
    assert store.attrs["input_size"].tolist() == list(config["input_size"]) == [3, 224, 224]
    assert tuple(config["mean"]) == expected_mean
    np.testing.assert_array_equal(store.attrs["mean"], config["mean"])
    np.testing.assert_array_equal(store.attrs["std"], config["std"])
    images = torch.stack([eval_input(images_dir / i, 224, config["crop_pct"], config["interpolation"], config["mean"],
                                     config["std"]) for i in GOOD[:2]])
    patches, global_vectors = timm_patches_and_global(source, images)
    for row in range(2):
        torch.testing.assert_close(store.read(row)[0], patches[row], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(store.read(row)[1], global_vectors[row], rtol=1e-4, atol=1e-4)
