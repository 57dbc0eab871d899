import numpy as np
import pytest
from detfold.folds import assign_folds, class_counts, fold_split, read_folds, write_folds


def max_image_share_deviation(coco, folds, k):
    present = class_counts(coco) > 0
    fold = folds.set_index("image_id").loc[coco.image_ids, "fold"].to_numpy()
    shares = np.array([present[fold == f].sum(axis=0) / present.sum(axis=0) for f in range(k)])
    return float(np.abs(shares - 1 / k).max())


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_partition_balance_and_determinism(bccd, k):
    folds = assign_folds(bccd, k=k, seed=42)
    assert sorted(folds.image_id) == sorted(bccd.image_ids)
    assert set(folds.fold) == set(range(k))
    assert folds.equals(assign_folds(bccd, k=k, seed=42))
    assert max_image_share_deviation(bccd, folds, k) < 0.03
    sizes = folds.fold.value_counts()
    assert sizes.max() - sizes.min() <= 2


def test_seed_changes_the_split(bccd):
    assert not assign_folds(bccd, k=3, seed=42).equals(assign_folds(bccd, k=3, seed=7))


def test_fold_files_keep_ids_and_split_cleanly(bccd, tmp_path):
    folds = assign_folds(bccd, k=3, seed=42)
    write_folds(folds, tmp_path / "folds.csv")
    again = read_folds(tmp_path / "folds.csv")
    assert again.equals(folds)
    train, val = fold_split(bccd, again, 1)
    assert set(val.image_ids) == set(folds.image_id[folds.fold == 1])
    assert not set(train.image_ids) & set(val.image_ids)
    assert len(train.annotations) + len(val.annotations) == len(bccd.annotations)


@pytest.mark.parametrize(("k", "message"), [(1, "integer >= 2"), (400, "larger than the number of images")])
def test_bad_k(bccd, k, message):
    with pytest.raises(ValueError, match=message):
        assign_folds(bccd, k=k, seed=42)
