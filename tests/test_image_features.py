import os

import h5py
import numpy as np
import pytest
import torch

from helpers import setup_task
from m3p_fairseq.data.image_features import (
    FeatureFileExistsError,
    ImageFeatureError,
    ImageFeatureStore,
    ImageFeatureWriter,
    read_image_ids,
)
from m3p_fairseq.data.multimodal_pair_dataset import images_per_row


def features(n, p=3, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, p, d)).astype("float32"), rng.standard_normal((n, d)).astype("float32")


def test_roundtrip_and_rows(tmp_path):
    ids = ["b.jpg", "a.jpg", "c.jpg"]
    patches, global_vectors = features(3)
    writer = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", {"backbone": "test"})
    writer.write(patches, global_vectors)
    writer.close()
    assert not (tmp_path / "f.h5.partial").exists()
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert (store.num_images, store.num_patches, store.feature_dim) == (3, 3, 5)
    assert store.attrs["backbone"] == "test"
    rows = store.rows_for(["c.jpg", "b.jpg", "c.jpg"], "list.txt")
    assert rows.tolist() == [2, 0, 2]
    got_patches, got_global = store.read(1)
    np.testing.assert_array_equal(got_patches.numpy(), patches[1])
    np.testing.assert_array_equal(got_global.numpy(), global_vectors[1])


def test_float16_storage(tmp_path):
    patches, global_vectors = features(2)
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["x", "y"], 3, 5, "float16")
    writer.write(patches, global_vectors)
    writer.close()
    got, _ = ImageFeatureStore(tmp_path / "f.h5").read(0)
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), patches[0], atol=1e-2)


def test_missing_id_names_list_and_line(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5)
    writer.write(*features(1))
    writer.close()
    with pytest.raises(ImageFeatureError, match=r"ids\.txt:2: image id 'zzz' is not in .*f\.h5"):
        ImageFeatureStore(tmp_path / "f.h5").rows_for(["a", "zzz"], "ids.txt")


def test_not_a_feature_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ImageFeatureError, match="missing dataset"):
        ImageFeatureStore(tmp_path / "other.h5")
    with pytest.raises(ImageFeatureError, match="not found"):
        ImageFeatureStore(tmp_path / "absent.h5")


def test_empty_line_in_id_list(tmp_path):
    (tmp_path / "ids").write_text("a.jpg\n\nb.jpg\n")
    with pytest.raises(ImageFeatureError, match=r"ids:2: empty image id"):
        read_image_ids(tmp_path / "ids")


def test_writer_resumes_after_interruption(tmp_path):
    ids = [f"{i}.png" for i in range(6)]
    patches, global_vectors = features(6)
    first = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", {"backbone": "vit"})
    first.write(patches[:4], global_vectors[:4])
    first.close()  # interrupted: not all rows written, so nothing is published
    assert not (tmp_path / "f.h5").exists() and (tmp_path / "f.h5.partial").exists()

    resumed = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", {"backbone": "vit"})
    assert resumed.rows_written == 4
    resumed.write(patches[4:], global_vectors[4:])
    resumed.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    np.testing.assert_array_equal(store.read(5)[0].numpy(), patches[5])
    np.testing.assert_array_equal(store.read(0)[0].numpy(), patches[0])


def test_writer_keeps_a_partial_of_another_job_and_says_what_differs(tmp_path):
    ids = ["a", "b"]
    first = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", {"backbone": "vit"})
    first.write(*[x[:1] for x in features(2)])
    first.close()
    partial = tmp_path / "f.h5.partial"
    before = partial.read_bytes()
    with pytest.raises(ImageFeatureError, match=r"f\.h5\.partial: unfinished features of another extraction "
                                                r"\(backbone vit there, 'resnet' now\); it is left as it is"):
        ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", {"backbone": "resnet"})
    with pytest.raises(ImageFeatureError, match=r"\(the image ids; shape \[3, 5, 'float32'\] there, "
                                                r"\[4, 5, 'float32'\] now\)"):
        ImageFeatureWriter(tmp_path / "f.h5", ["a", "c"], 4, 5, "float32", {"backbone": "vit"})
    assert partial.read_bytes() == before and not (tmp_path / "f.h5.lock").exists()
    partial.unlink()  # what the message tells the user to do to start the other job
    other = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", {"backbone": "resnet"})
    assert other.rows_written == 0
    other.close()


def test_store_reopens_in_each_process(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5)
    writer.write(*features(1))
    writer.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    store.read(0)
    assert store._owner_pid == os.getpid()
    state = store.__getstate__()  # what a spawned worker receives
    assert state["_file"] is None and state["_owner_pid"] is None


def test_dataloader_with_two_workers_matches_main_process(data_dir):
    task, cfg = setup_task(data_dir)
    task.load_dataset("valid")
    dataset = task.dataset("valid")

    def batches(num_workers):
        iterator = task.get_batch_iterator(dataset=dataset, max_sentences=5, num_workers=num_workers, seed=7)
        return list(iterator.next_epoch_itr(shuffle=False))

    in_process, with_workers = batches(0), batches(2)
    assert len(in_process) == len(with_workers) > 1
    total = 0
    for a, b in zip(in_process, with_workers):
        assert torch.equal(a["id"], b["id"])
        assert torch.equal(a["net_input"]["image_patches"], b["net_input"]["image_patches"])
        assert a["net_input"]["image_patches"].shape[1:] == (4, 16)
        total += len(a["id"])
    assert total == len(dataset)
    # and each row is the image of that example, in the batch's (length-sorted) order
    store = dataset.datasets[0].image_store
    first = with_workers[0]
    for position, example_id in enumerate(first["id"].tolist()):
        sub_dataset, local = _locate(dataset, example_id)
        expected, _ = store.read(int(sub_dataset.image_rows[local]))
        assert torch.equal(images_per_row(first["net_input"])[0][position], expected.float())


def _locate(concat, index):
    for dataset, end in zip(concat.datasets, concat.cumulative_sizes):
        if index < end:
            return dataset, index - (end - len(dataset))
    raise IndexError(index)


def view_features(n, k, p=3, d=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k, p, d)).astype("float32"), rng.standard_normal((n, k, d)).astype("float32")


def test_roundtrip_with_views(tmp_path):
    patches, global_vectors = features(3)
    view_patches, view_global = view_features(3, 2)
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b", "c"], 3, 5, "float32", num_views=2)
    writer.write(patches[:2], global_vectors[:2], view_patches[:2], view_global[:2])
    writer.write(patches[2:], global_vectors[2:], view_patches[2:], view_global[2:])
    writer.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert store.num_views == 2
    for row in range(3):
        np.testing.assert_array_equal(store.read(row)[0].numpy(), patches[row])
        for view in range(2):
            got_patches, got_global = store.read(row, view)
            np.testing.assert_array_equal(got_patches.numpy(), view_patches[row, view])
            np.testing.assert_array_equal(got_global.numpy(), view_global[row, view])
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["view_patches"].chunks == (1, 1, 3, 5)  # one (image, view) = one chunk
        assert f["view_patches"].dtype == f["patches"].dtype == np.float32


def test_file_without_views_has_no_view_to_read(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5)
    writer.write(*features(1))
    writer.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert store.num_views == 0
    with pytest.raises(ImageFeatureError, match=r"f\.h5: no augmented view 0 \(valid views: none"):
        store.read(0, 0)


def test_file_without_num_views_attribute_has_no_views(tmp_path):
    # files written before views existed carry no num_views attribute
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5)
    writer.write(*features(1))
    writer.close()
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f.attrs["num_views"]
    assert ImageFeatureStore(tmp_path / "f.h5").num_views == 0


def test_view_out_of_range_names_file_and_range(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5, "float32", num_views=2)
    writer.write(*features(1), *view_features(1, 2))
    writer.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    for view in (2, -1):
        with pytest.raises(ImageFeatureError, match=rf"f\.h5: no augmented view {view} \(valid views: 0\.\.1\)"):
            store.read(0, view)


def test_store_rejects_view_datasets_that_do_not_match(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5, "float32", num_views=2)
    writer.write(*features(2), *view_features(2, 2))
    writer.close()
    with h5py.File(tmp_path / "f.h5", "a") as f:
        f.attrs["num_views"] = 3
    with pytest.raises(ImageFeatureError, match=r"f\.h5: num_views = 3 but dataset view_patches is \(2, 2, 3, 5\)"):
        ImageFeatureStore(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "a") as f:
        f.attrs["num_views"] = 2
        del f["view_global"]
    with pytest.raises(ImageFeatureError, match=r"dataset view_global is missing"):
        ImageFeatureStore(tmp_path / "f.h5")


def test_write_needs_views_exactly_when_the_writer_stores_them(tmp_path):
    with_views = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5, "float32", num_views=2)
    with pytest.raises(ImageFeatureError, match=r"stores 2 augmented views per image; every write\(\) needs "
                                                r"view_patches \[B, 2, 3, 5\] and view_global \[B, 2, 5\]"):
        with_views.write(*features(2))
    view_patches, view_global = view_features(2, 3)
    with pytest.raises(ImageFeatureError, match=r"view_patches has shape \(2, 3, 3, 5\), expected \(2, 2, 3, 5\)"):
        with_views.write(*features(2), view_patches, view_global)
    assert with_views.rows_written == 0  # nothing half-written
    with_views.close()
    without_views = ImageFeatureWriter(tmp_path / "g.h5", ["a"], 3, 5, "float32")
    with pytest.raises(ImageFeatureError, match="opened with num_views=0"):
        without_views.write(*features(1), *view_features(1, 2))
    without_views.close()


def test_writer_with_views_resumes_and_refuses_another_num_views(tmp_path):
    ids = [f"{i}.png" for i in range(4)]
    patches, global_vectors = features(4)
    view_patches, view_global = view_features(4, 2)
    first = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", num_views=2)
    first.write(patches[:2], global_vectors[:2], view_patches[:2], view_global[:2])
    first.close()  # interrupted
    with pytest.raises(ImageFeatureError, match=r"another extraction \(num_views 2 there, 3 now\)"):
        ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", num_views=3)
    resumed = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", num_views=2)
    assert resumed.rows_written == 2
    resumed.write(patches[2:], global_vectors[2:], view_patches[2:], view_global[2:])
    resumed.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    np.testing.assert_array_equal(store.read(0, 1)[0].numpy(), view_patches[0, 1])
    np.testing.assert_array_equal(store.read(3, 0)[1].numpy(), view_global[3, 0])


def test_empty_id_list(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", [], 3, 5, "float32", num_views=2)
    writer.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert (store.num_images, store.num_views) == (0, 2)


def test_usable_flags_roundtrip_and_count(tmp_path):
    patches, global_vectors = features(4)
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b", "c", "d"], 3, 5, "float32")
    writer.write(patches[:2], global_vectors[:2], None, None, np.array([True, False]))
    writer.write(patches[2:], global_vectors[2:])  # unflagged rows are usable
    assert writer.unusable_rows().tolist() == [1]
    writer.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert store.usable.dtype == bool and store.usable.tolist() == [True, False, True, True]
    assert store.num_unusable == 1 and store.attrs["num_unusable"] == 1
    np.testing.assert_array_equal(store.read(1)[0].numpy(), patches[1])  # reading is unchanged


def test_file_without_usable_reads_as_all_usable(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5)
    writer.write(*features(2))
    writer.close()
    with h5py.File(tmp_path / "f.h5", "a") as f:  # as files written before the flag existed
        del f["usable"]
        del f.attrs["num_unusable"]
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert store.usable.tolist() == [True, True] and store.num_unusable == 0


def test_usable_of_the_wrong_shape_is_rejected(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5)
    with pytest.raises(ImageFeatureError, match=r"usable must be a bool array of shape \(2,\)"):
        writer.write(*features(2), None, None, np.array([1, 0]))
    writer.write(*features(2))
    writer.close()
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f["usable"]
        f["usable"] = np.ones(3, dtype=bool)
    with pytest.raises(ImageFeatureError, match=r"f\.h5: dataset usable is \(3,\), expected \(2,\)"):
        ImageFeatureStore(tmp_path / "f.h5")


def test_rewrite_replaces_a_flagged_row_after_resuming(tmp_path):
    ids = ["a", "b", "c"]
    patches, global_vectors = features(3)
    view_patches, view_global = view_features(3, 2)
    zeros = [np.zeros_like(x[:1]) for x in (patches, global_vectors, view_patches, view_global)]
    first = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", num_views=2)
    first.write(patches[:1], global_vectors[:1], view_patches[:1], view_global[:1])
    first.write(*zeros, np.array([False]))
    first.close()  # interrupted after two rows, the second unusable
    resumed = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32", num_views=2)
    assert resumed.rows_written == 2 and resumed.unusable_rows().tolist() == [1]
    with pytest.raises(ImageFeatureError, match=r"only written rows \(0\.\.1\) can be rewritten, got \[2\]"):
        resumed.rewrite([2], patches[2:], global_vectors[2:], view_patches[2:], view_global[2:])
    resumed.rewrite([1], patches[1:2], global_vectors[1:2], view_patches[1:2], view_global[1:2])
    resumed.write(patches[2:], global_vectors[2:], view_patches[2:], view_global[2:])
    resumed.close()
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert store.num_unusable == 0 and store.usable.all()
    np.testing.assert_array_equal(store.read(1)[0].numpy(), patches[1])
    np.testing.assert_array_equal(store.read(1, 1)[1].numpy(), view_global[1, 1])


def test_partial_from_before_the_flag_resumes_as_usable(tmp_path):
    ids = ["a", "b"]
    patches, global_vectors = features(2)
    first = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32")
    first.write(patches[:1], global_vectors[:1])
    first.close()
    with h5py.File(tmp_path / "f.h5.partial", "a") as f:
        del f["usable"]
    resumed = ImageFeatureWriter(tmp_path / "f.h5", ids, 3, 5, "float32")
    assert resumed.rows_written == 1  # same fingerprint: the flag did not change it
    resumed.write(patches[1:], global_vectors[1:])
    resumed.close()
    assert ImageFeatureStore(tmp_path / "f.h5").usable.tolist() == [True, True]


def test_close_without_publishing_keeps_the_complete_partial(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5)
    writer.write(*features(1))
    writer.close(publish=False)
    assert not (tmp_path / "f.h5").exists()
    resumed = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5)
    assert resumed.rows_written == 1
    resumed.close()
    assert (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()


def test_store_refuses_an_unfinished_file_naming_it_and_the_row_count(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b", "c"], 3, 5, "float32")
    writer.write(*[x[:2] for x in features(3)])
    writer.close()  # interrupted: 2 of 3 rows
    partial = tmp_path / "f.h5.partial"
    with pytest.raises(ImageFeatureError, match=rf"{partial}: unfinished feature file, only 2 of 3 images were "
                                                r"written \(rows_written = 2\); the rest would read as zeros"):
        ImageFeatureStore(partial)
    os.replace(partial, tmp_path / "f.h5")  # what a second extraction used to do with the first one's file
    with pytest.raises(ImageFeatureError, match=rf"{tmp_path / 'f.h5'}: unfinished feature file, only 2 of 3"):
        ImageFeatureStore(tmp_path / "f.h5")


def test_file_without_a_row_count_is_complete(tmp_path):
    # written by other tools: no rows_written attribute
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["image_ids"] = ["a", "b"]
        f["patches"], f["global"] = features(2)
    assert ImageFeatureStore(tmp_path / "f.h5").num_images == 2


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"left by a crash before the header was written"])
def test_partial_that_is_not_hdf5_is_started_over_and_the_log_says_so(tmp_path, caplog, content):
    partial = tmp_path / "f.h5.partial"
    partial.write_bytes(content)
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5, "float32")
    assert writer.rows_written == 0
    assert f"{partial} is not an HDF5 file ({len(content)} bytes; a run killed before it wrote the file's header?): " \
           "starting over" in caplog.text
    patches, global_vectors = features(2)
    writer.write(patches, global_vectors)
    writer.close()
    np.testing.assert_array_equal(ImageFeatureStore(tmp_path / "f.h5").read(1)[0].numpy(), patches[1])


def test_partial_that_hdf5_cannot_open_is_kept_and_named(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5, "float32")
    writer.write(*[x[:1] for x in features(2)])
    writer.close()
    partial = tmp_path / "f.h5.partial"
    damaged = partial.read_bytes()[:1500]  # the HDF5 signature, but cut short (a disk that filled up)
    partial.write_bytes(damaged)
    with pytest.raises(ImageFeatureError, match=rf"{partial}: cannot resume this unfinished feature file, HDF5 cannot "
                                                r"open it \(.*\)\. It is left as it is; move or delete it"):
        ImageFeatureWriter(tmp_path / "f.h5", ["a", "b"], 3, 5, "float32")
    assert partial.read_bytes() == damaged and not (tmp_path / "f.h5.lock").exists()


def test_writer_holds_a_lock_file_with_its_pid_while_open(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5, "float32")
    assert (tmp_path / "f.h5.lock").read_text() == f"{os.getpid()}\n"
    writer.write(*features(1))
    writer.close()
    assert not (tmp_path / "f.h5.lock").exists() and (tmp_path / "f.h5").exists()


def test_writer_told_to_keep_a_finished_file_refuses_it(tmp_path):
    writer = ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5, "float32")
    writer.write(*features(1))
    writer.close()
    before = (tmp_path / "f.h5").read_bytes()
    with pytest.raises(FeatureFileExistsError, match=rf"{tmp_path / 'f.h5'} exists; delete it to write it again"):
        ImageFeatureWriter(tmp_path / "f.h5", ["a"], 3, 5, "float32", replace_existing=False)
    assert (tmp_path / "f.h5").read_bytes() == before
    assert not (tmp_path / "f.h5.partial").exists() and not (tmp_path / "f.h5.lock").exists()
