"""Retrieval recalls on hand-made similarity matrices, with the ranks worked out by hand."""

import pytest
import torch

from m3p_fairseq.evaluation.retrieval import (
    RetrievalError,
    caption_image_index,
    check_disjoint_images,
    embedding_retrieval_scores,
    format_scores,
    retrieval_ranks,
    retrieval_scores,
    scores_table,
)

# 3 images, 5 captions: captions 0, 1 describe image 0, caption 2 image 1, captions 3, 4 image 2.
SIMILARITY = torch.tensor([
    #  c0   c1   c2   c3   c4
    [0.9, 0.1, 0.5, 0.2, 0.3],  # image 0
    [0.8, 0.7, 0.6, 0.1, 0.0],  # image 1
    [0.4, 0.2, 0.6, 0.3, 0.5],  # image 2
])
CAPTION_IMAGE = torch.tensor([0, 0, 1, 2, 2])


def test_ranks_by_hand():
    i2t, t2i = retrieval_ranks(SIMILARITY, CAPTION_IMAGE)
    # image 0: best own caption c0 (0.9), no wrong caption >= 0.9 -> 0
    # image 1: own c2 (0.6), wrong c0 0.8 and c1 0.7 score higher -> 2
    # image 2: best own c4 (0.5), wrong c2 0.6 scores higher -> 1 (c0 0.4 does not)
    assert i2t.tolist() == [0, 2, 1]
    # c1: own image 0 scores 0.1, images 1 (0.7) and 2 (0.2) higher -> 2
    # c2: own image 1 scores 0.6, image 2 ties at 0.6 -> pessimistic rank 1
    assert t2i.tolist() == [0, 2, 1, 0, 0]


def test_recalls_by_hand():
    scores = retrieval_scores(SIMILARITY, CAPTION_IMAGE, ks=(1, 2, 3))
    assert scores["i2t_r1"] == pytest.approx(100 / 3)
    assert scores["i2t_r2"] == pytest.approx(200 / 3)
    assert scores["i2t_r3"] == pytest.approx(100.0)
    assert scores["t2i_r1"] == pytest.approx(60.0)
    assert scores["t2i_r2"] == pytest.approx(80.0)
    assert scores["t2i_r3"] == pytest.approx(100.0)
    assert scores["mR"] == pytest.approx((100 / 3 + 200 / 3 + 100 + 60 + 80 + 100) / 6)
    default = retrieval_scores(SIMILARITY, CAPTION_IMAGE)
    assert set(default) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"}
    assert default["mR"] == pytest.approx((100 / 3 + 100 + 100 + 60 + 100 + 100) / 6)


def test_ties_are_pessimistic_and_order_independent():
    flat = torch.zeros(3, 3)  # a model that cannot tell anything apart earns nothing at R@1
    scores = retrieval_scores(flat, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert scores["i2t_r1"] == 0 and scores["t2i_r1"] == 0
    assert scores["i2t_r2"] == 0 and scores["i2t_r3"] == 100
    # permuting captions (columns) and images (rows) changes nothing
    cols, rows = torch.tensor([4, 2, 0, 3, 1]), torch.tensor([2, 0, 1])
    new_row_of_old = torch.argsort(rows)
    permuted = SIMILARITY[rows][:, cols]
    assert retrieval_scores(permuted, new_row_of_old[CAPTION_IMAGE[cols]]) == retrieval_scores(SIMILARITY, CAPTION_IMAGE)


def test_image_query_hits_with_any_caption():
    # image 0 has two captions; only the second one is ranked first
    similarity = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8]])
    i2t, _ = retrieval_ranks(similarity, torch.tensor([0, 0, 1]))
    assert i2t.tolist() == [0, 0]


def test_embedding_scores_use_cosine():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # caption 0 is long but points at image 0; caption 1 is closer in angle to image 0 than image 1
    captions = torch.tensor([[10.0, 1.0], [1.0, 0.9]])
    scores = embedding_retrieval_scores(images, captions, torch.tensor([0, 1]), ks=(1,))
    # cosines: image 0 -> (c0 0.995, c1 0.743), image 1 -> (c0 0.0995, c1 0.669)
    assert scores["t2i_r1"] == 50.0  # caption 1 retrieves image 0 (0.743 > 0.669): a miss
    assert scores["i2t_r1"] == 100.0  # each image ranks its own caption first
    with pytest.raises(RetrievalError, match="same dual encoder"):
        embedding_retrieval_scores(images, torch.ones(2, 3), torch.tensor([0, 1]))


def test_bad_input_is_refused():
    with pytest.raises(RetrievalError, match="caption 2 points to image 5"):
        retrieval_scores(torch.zeros(2, 3), torch.tensor([0, 1, 5]))
    with pytest.raises(RetrievalError, match="image 1 has no caption"):
        retrieval_scores(torch.zeros(2, 2), torch.tensor([0, 0]))
    with pytest.raises(RetrievalError, match="NaN"):
        retrieval_scores(torch.tensor([[float("nan")]]), torch.tensor([0]))
    with pytest.raises(RetrievalError, match="3 captions"):
        retrieval_scores(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_caption_image_index_and_leaks():
    assert caption_image_index(["b", "a", "b"], ["a", "b"]).tolist() == [1, 0, 1]
    with pytest.raises(RetrievalError, match=r"test.de:2: image id 'z'"):
        caption_image_index(["a", "z"], ["a", "b"], source="test.de")
    with pytest.raises(RetrievalError, match="occurs twice"):
        caption_image_index(["a"], ["a", "a"])
    check_disjoint_images(["t1", "t2"], ["a", "b"])
    with pytest.raises(RetrievalError, match=r"1 test image\(s\) also occur in the training images \('t2'\)"):
        check_disjoint_images(["t1", "t2"], ["t2", "b"])


def test_format():
    line = format_scores(retrieval_scores(SIMILARITY, CAPTION_IMAGE, ks=(1,)), "de")
    assert line == "de: i2t R@1 33.3 | t2i R@1 60.0 | mR 46.7"


def test_three_captions_per_image_and_ties_in_both_directions_by_hand():
    # image A has captions c0, c1, c2; image B has c3, c4; image C has c5
    similarity = torch.tensor([
        #  c0   c1   c2   c3   c4   c5
        [0.9, 0.1, 0.2, 0.9, 0.3, 0.0],  # A
        [0.5, 0.5, 0.5, 0.4, 0.6, 0.5],  # B
        [0.2, 0.8, 0.1, 0.7, 0.7, 0.7],  # C
    ])
    caption_image = torch.tensor([0, 0, 0, 1, 1, 2])
    i2t, t2i = retrieval_ranks(similarity, caption_image)
    # A: best own caption c0 0.9, wrong c3 ties at 0.9 -> 1; B: best own c4 0.6, wrong ones are 0.5 -> 0;
    # C: own c5 0.7, wrong c1 0.8, c3 0.7 and c4 0.7 (two ties) -> 3
    assert i2t.tolist() == [1, 0, 3]
    # c0: A 0.9 beats B, C -> 0; c1: A 0.1 < B 0.5, C 0.8 -> 2; c2: A 0.2 < B 0.5 -> 1;
    # c3: B 0.4 < A 0.9, C 0.7 -> 2; c4: B 0.6 < C 0.7 -> 1; c5: C 0.7 beats A, B -> 0
    assert t2i.tolist() == [0, 2, 1, 2, 1, 0]
    scores = retrieval_scores(similarity, caption_image, ks=(1, 2, 3))
    assert [scores[f"i2t_r{k}"] for k in (1, 2, 3)] == pytest.approx([100 / 3, 200 / 3, 200 / 3])
    assert [scores[f"t2i_r{k}"] for k in (1, 2, 3)] == pytest.approx([100 / 3, 200 / 3, 100.0])
    assert scores["mR"] == pytest.approx(1100 / 18)
    # the default K = 1, 5, 10: every rank is below 5
    assert retrieval_scores(similarity, caption_image)["mR"] == pytest.approx((100 / 3 + 100 + 100) / 3)


def test_leak_error_names_the_files():
    with pytest.raises(RetrievalError, match=r"1 test image\(s\) of data/test.image_ids also occur in the training "
                                             r"images of data/train.image_ids \('t2'\)"):
        check_disjoint_images(["t1", "t2"], ["t2", "b"], "data/test.image_ids", "data/train.image_ids")


def test_scores_table_has_a_row_per_language():
    scores = retrieval_scores(SIMILARITY, CAPTION_IMAGE)
    lines = scores_table({"en": scores, "de": scores}).splitlines()
    assert lines[0] == "| language | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | mR |"
    assert lines[2] == "| en | 33.3 | 100.0 | 100.0 | 60.0 | 100.0 | 100.0 | 82.2 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| en", "| de"]
