"""The imagefolder dataset: ImageFolder layout, decoded once, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qbench.core.errors import QbenchError
from qbench.data.protocols import make_splits
from qbench.registry import DATASETS

CLASSES = ("cat", "ant", "bee")  # sorted: ant=0, bee=1, cat=2


def write_image(path, value: int, size=(8, 6), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG",
               quality=100)


def make_folder(root, per_class=(4, 3)):
    for split, count in zip(("train", "test"), per_class):
        for c, name in enumerate(CLASSES):
            for i in range(count):
                ext = ".png" if i % 2 == 0 else ".JPG"
                write_image(root / split / name / f"{i:02d}{ext}", 10 * c + i)
    return root


def plugin(root, **params):
    return DATASETS.get("imagefolder")(
        DATASETS.resolve_params("imagefolder", {"path": str(root), **params}), None)


def test_loads_the_layout_in_a_fixed_order(tmp_path):
    ds = plugin(make_folder(tmp_path / "imgs")).load()
    assert ds.X.shape == (21, 3, 6, 8) and ds.X.dtype == np.uint8 and ds.modality == "image"
    assert ds.class_names == ["ant", "bee", "cat"]
    # train first, then test; classes in sorted order, files by name
    expected_train = [0] * 4 + [1] * 4 + [2] * 4
    assert ds.y.tolist() == expected_train + [0] * 3 + [1] * 3 + [2] * 3
    # the first item is train/ant/00.png, written with value 10 * index("ant") + 0
    assert int(ds.X[0, 0, 0, 0]) == 10 * CLASSES.index("ant")
    again = plugin(tmp_path / "imgs").load()
    np.testing.assert_array_equal(ds.X, again.X)


def test_grey_images_have_one_channel_and_palette_images_become_rgb(tmp_path):
    root = tmp_path / "grey"
    for split in ("train", "test"):
        for name in ("a", "b"):
            write_image(root / split / name / "x.png", 5, mode="L")
    assert plugin(root).load().X.shape == (4, 1, 6, 8)
    root = tmp_path / "palette"
    for split in ("train", "test"):
        for name in ("a", "b"):
            write_image(root / split / name / "x.png", 5, mode="P")
    assert plugin(root).load().X.shape == (4, 3, 6, 8)


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from qbench.datasets import imagefolder

    root = make_folder(tmp_path / "imgs")
    first = plugin(root).load_cached(tmp_path / "cache")
    calls = []
    real = imagefolder.decode
    monkeypatch.setattr(imagefolder, "decode", lambda p: calls.append(p) or real(p))
    hit = plugin(root).load_cached(tmp_path / "cache")
    assert calls == [] and hit.checksum == first.checksum
    np.testing.assert_array_equal(hit.X, first.X)
    write_image(root / "test" / "bee" / "01.JPG", 200)  # an image rewritten in place
    changed = plugin(root).load_cached(tmp_path / "cache")
    assert calls and changed.checksum != first.checksum


def test_the_protocol_draws_per_class_splits(tmp_path):
    p = plugin(make_folder(tmp_path / "imgs", per_class=(8, 6)), n_query=3, n_train=6,
               n_val=3)
    ds = p.load()
    splits = make_splits(ds, p.protocol("standard"), seed=0)
    assert len(splits.query) == 3 and len(splits.train) == 6
    assert np.bincount(ds.y[splits.train], minlength=3).tolist() == [2, 2, 2]
    assert not set(splits.query) & set(splits.database)


@pytest.mark.parametrize("breakage,message", [
    (lambda root: None, "pass -D path=ROOT"),
    (lambda root: (root / "missing"), "is not a directory"),
    (lambda root: __import__("shutil").rmtree(root / "test"), "test is missing"),
    (lambda root: (root / "train" / "dog").mkdir(), "train/dog has no counterpart in"),
    (lambda root: [p.unlink() for p in (root / "test" / "bee").iterdir()],
     "test/bee holds no images"),
    (lambda root: (root / "train" / "ant" / "00.png").write_bytes(b"not a png"),
     "train/ant/00.png is not a readable image"),
    (lambda root: write_image(root / "test" / "cat" / "zz.png", 1, size=(9, 6)),
     "is 9x6 with 3 channels but"),
])
def test_bad_folders_are_one_line_errors(tmp_path, breakage, message):
    root = make_folder(tmp_path / "imgs")
    result = breakage(root)
    path = "" if message.startswith("pass") else (result if isinstance(result, Path) else root)
    with pytest.raises(QbenchError) as err:
        plugin(path).load()
    text = str(err.value)
    assert message in text and "\n" not in text


def test_no_class_folders_is_an_error(tmp_path):
    (tmp_path / "e" / "train").mkdir(parents=True)
    (tmp_path / "e" / "test").mkdir()
    with pytest.raises(QbenchError, match="holds no class folders"):
        plugin(tmp_path / "e").load()


def test_cli_runs_a_method_on_a_folder(tmp_path):
    from click.testing import CliRunner

    from qbench.cli import cli

    root = make_folder(tmp_path / "imgs", per_class=(8, 6))
    res = CliRunner().invoke(cli, ["run", "--method", "lsh", "--dataset", "imagefolder",
                                   "-D", f"path={root}", "-D", "n_query=3", "-D", "n_train=6",
                                   "-D", "n_val=3", "--bits", "8", "--out", str(tmp_path / "o"),
                                   "-q"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "o").glob("imagefolder-standard-lsh-8b-seed0-*.json"))
