import json
from pathlib import Path

import pytest
from detfold.core.coco import CocoFormatError, load_coco
from detfold.core.io import read_json, write_json


def write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def minimal():
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 1, "name": "cell"}],
    }


def test_bundled_data_loads(bccd, bccd_test):
    assert len(bccd.images) == 291 and len(bccd.annotations) == 3897
    assert bccd.class_names == ["RBC", "WBC", "Platelets"]
    assert not set(bccd.image_ids) & set(bccd_test.image_ids)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("images"), "missing top-level key 'images'"),
        (lambda d: d.update(categories={}), "'categories' must be a list"),
        (lambda d: d["images"].append(dict(d["images"][0])), "images[1].id 1 is a duplicate"),
        (lambda d: d["annotations"][0].update(image_id=7), "image_id 7 is not in 'images'"),
        (lambda d: d["annotations"][0].update(category_id=9), "category_id 9 is not in 'categories'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be 4 finite numbers"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 3]), "bbox must be 4 finite numbers"),
        (lambda d: d["annotations"][0].update(id="x"), "annotations[0].id must be an integer"),
    ],
)
def test_structural_errors_name_file_path_and_value(tmp_path, mutate, message):
    data = minimal()
    mutate(data)
    path = write(tmp_path, json.dumps(data, allow_nan=True))
    with pytest.raises(CocoFormatError) as err:
        load_coco(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_truncated_and_non_json_files(tmp_path):
    with pytest.raises(ValueError, match="truncated JSON"):
        read_json(write(tmp_path, '{"images": [', "cut.json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(write(tmp_path, "images,annotations\n1,2\n", "table.json"))
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        read_json(tmp_path / "nope.json")


def test_unlabelled_image_list_is_accepted_when_asked(tmp_path):
    data = minimal()
    data.pop("annotations")
    coco = load_coco(write(tmp_path, data), require_annotations=False)
    assert coco.annotations == []


def test_write_json_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.fixture(scope="module")
def demo_oof_file(tmp_path_factory):
    """The demo run's real out-of-fold predictions (23,200 boxes, 3.5 MB as the workflow
    writes them)."""
    import gzip

    with gzip.open(Path(__file__).parents[1] / "data" / "bccd_oof" / "predictions.json.gz", "rt") as handle:
        rows = json.load(handle)["oof"]
    path = tmp_path_factory.mktemp("oof") / "oof.json"
    write_json(path, rows)
    return path, rows


def test_a_cut_short_product_is_deleted(demo_oof_file, bccd, tmp_path):
    """A predictions file an earlier job left cut short: the message names the file and it is
    deleted, so that the next run redoes its job."""
    from detfold.core.coco import read_detections

    text = demo_oof_file[0].read_bytes()
    path = tmp_path / "oof.json"
    path.write_bytes(text[: int(len(text) * 0.9)])
    with pytest.raises(ValueError, match="deleted it"):
        read_detections(bccd, str(path))
    assert not path.exists()
    path.write_bytes(text)
    assert len(read_detections(bccd, str(path))) == len(demo_oof_file[1])
