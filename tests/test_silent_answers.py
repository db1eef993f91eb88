"""Where a careless user used to get a wrong answer without a word, or a riddle instead of a
message: two datasets under one id, a tar replaced with its old mtime, the same tar twice, forged
activations outside what the shown examples cover, symlink loops, a raising factory, weights of
the wrong shape, bad `show`/`image` arguments, link members, a download message, a huge figure."""
from __future__ import annotations

import io
import os
import shutil
import tarfile

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import layer_frame, plan_of, write_pngs
from unitscope import stages
from unitscope.cli import main
from unitscope.inputs import Preprocessing, load_image
from unitscope.plan import PlanError

BASE = {"layers": ["block3"], "device": "cpu"}


def pngs(folder, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return write_pngs(folder, [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(n)])


def index_folder(tmp_path, cfg: dict, at) -> None:
    """What the dataset job does for `cfg`, results under `at` (a working directory)."""
    plan = plan_of({**BASE, "dataset": cfg}, check_results=True)
    L = plan.layout
    os.makedirs(at / L.data, exist_ok=True)
    stages.dataset(plan.dataset, str(at / L.manifest), str(at / L.rejected), str(at / "resources"),
                   record=str(at / L.dataset_record), identity=plan.dataset_identity)


def test_a_second_dataset_under_the_same_id_is_refused_naming_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pngs(tmp_path / "a" / "photos")
    pngs(tmp_path / "b" / "photos", seed=1)
    a = {"name": "folder", "path": str(tmp_path / "a" / "photos")}
    index_folder(tmp_path, a, tmp_path)
    plan_of({**BASE, "dataset": a}, check_results=True)  # the same dataset again: fine
    with pytest.raises(PlanError) as err:
        plan_of({**BASE, "dataset": {"name": "folder", "path": str(tmp_path / "b" / "photos")}},
                check_results=True)
    text = str(err.value)
    assert text.startswith("config key 'dataset.id': results/photos holds dataset folder")
    assert f"{tmp_path}/a/photos" in text and f"not folder {tmp_path}/b/photos" in text
    with pytest.raises(PlanError, match="'dataset.id'.*max_images 2"):  # another subset, too
        plan_of({**BASE, "dataset": {**a, "max_images": 2}}, check_results=True)
    plan_of({**BASE, "dataset": {"name": "folder", "path": str(tmp_path / "b" / "photos"),
                                 "id": "photos-b"}}, check_results=True)  # its own id: fine


def fake_results(root, manifest_sha: str):
    """A results folder as the pipeline leaves it, with an activation file that records the
    manifest digest `manifest_sha` (and a tar-shard manifest)."""
    res = root / "results" / "D" / "M"
    (res / "topk").mkdir(parents=True)
    (res / "activations" / "L").mkdir(parents=True)
    layer_frame("L", 2, 4, 4, 5, 4, -1).to_parquet(res / "layers.parquet")
    pd.DataFrame({"image_id": pd.array([0], "int64"), "path": ["/data/shard-000.tar"],
                  "group": ["a"], "label": ["x"], "width": [224], "height": [224],
                  "crop_left": pd.array([None], "Int64"), "crop_top": pd.array([None], "Int64"),
                  "crop_right": pd.array([None], "Int64"), "crop_bottom": pd.array([None], "Int64"),
                  "member": ["s0/img01.jpg"]}).to_parquet(root / "results" / "D" / "manifest.parquet")
    pd.DataFrame({"unit": [0], "rank": [0], "image_id": [0], "activation": [1.5], "y0": [0],
                  "x0": [0], "y1": [5], "x1": [5]}).to_parquet(res / "topk" / "L.parquet")
    with h5py.File(res / "activations" / "L" / "shard-000.h5", "w") as f:
        f.attrs["manifest_sha256"] = manifest_sha
    return res


def test_show_and_image_refuse_results_of_another_manifest_and_bad_arguments(tmp_path, monkeypatch, capsys):
    from unitscope.provenance import file_sha256

    monkeypatch.chdir(tmp_path)
    res = fake_results(tmp_path, "0" * 64)
    assert main(["show", "--results", str(res), "--layer", "L", "--unit", "0"]) == 1
    assert "computed from another manifest" in capsys.readouterr().err
    assert main(["image", "--results", str(res), "--image-id", "0"]) == 1
    assert "computed from another manifest" in capsys.readouterr().err
    with h5py.File(res / "activations" / "L" / "shard-000.h5", "a") as f:
        f.attrs["manifest_sha256"] = file_sha256(tmp_path / "results" / "D" / "manifest.parquet")
    assert main(["show", "--results", str(res), "--layer", "L", "--unit", "0"]) == 0
    for args, message in (
            (["show", "--results", "/etc", "--layer", "L", "--unit", "0"], "--results /etc: not a results folder"),
            (["image", "--results", "results/D", "--image-id", "0"], "did you mean results/D/M?"),
            (["image", "--results", str(res), "--image-id", "0", "--top", "-5"], "--top -5: give")):
        capsys.readouterr()
        assert main(args) == 1
        err = capsys.readouterr().err
        assert message in err and "dataset.id" not in err and err.count("\n") == 1, err


def test_show_names_the_tar_member(tmp_path, monkeypatch, capsys):
    from unitscope.provenance import file_sha256

    monkeypatch.chdir(tmp_path)
    res = fake_results(tmp_path, "")
    with h5py.File(res / "activations" / "L" / "shard-000.h5", "a") as f:
        f.attrs["manifest_sha256"] = file_sha256(tmp_path / "results" / "D" / "manifest.parquet")
    assert main(["show", "--results", str(res), "--layer", "L", "--unit", "0"]) == 0
    assert "/data/shard-000.tar member s0/img01.jpg" in capsys.readouterr().out


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path, keys, seed=0, links=()):
    with tarfile.open(path, "w") as t:
        for i, key in enumerate(keys):
            data = jpeg(seed + i)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return path


def test_a_tar_replaced_with_its_old_mtime_is_found_by_the_plan_and_every_reader(tmp_path):
    tar = write_tar(tmp_path / "train-000.tar", ["a", "b"])
    cfg = {"name": "tar_shards", "urls": str(tar)}
    index_folder(tmp_path, cfg, tmp_path)
    m = pd.read_parquet(tmp_path / "results" / "tar_shards" / "manifest.parquet")
    assert m["tar_sha256"].notna().all() and m["tar_ctime_ns"].notna().all()
    before = plan_of({**BASE, "dataset": cfg}).dataset_listing
    prep = Preprocessing(40, 32)
    load_image(next(m.itertuples()), prep)
    # the same content touched (chmod): one re-hash, same digest, still readable
    os.chmod(tar, 0o600)
    load_image(next(m.itertuples()), prep)
    # other content of the same size, its old mtime kept (cp + touch -r)
    other = write_tar(tmp_path / "other.tar", ["a", "b"], seed=7)
    data = bytearray(tar.read_bytes())
    new = other.read_bytes()
    assert len(new) == len(data)
    st = os.stat(tar)
    shutil.copyfile(other, tar)
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(tar).st_mtime_ns == st.st_mtime_ns and os.stat(tar).st_size == st.st_size
    assert plan_of({**BASE, "dataset": cfg}).dataset_listing != before  # the dataset job reruns
    with pytest.raises(ValueError, match=r"tar shard .*train-000.tar is not the one the dataset was "
                                         r"indexed from .*snakemake --forcerun"):
        load_image(next(m.itertuples()), prep)


def test_the_same_tar_twice_is_refused_and_equal_keys_of_two_tars_stay_apart(tmp_path):
    a = write_tar(tmp_path / "a.tar", ["k0", "k1"])
    with pytest.raises(PlanError, match="'dataset.urls': .*a.tar' and .*a.tar' are the same tar"):
        plan_of({**BASE, "dataset": {"name": "tar_shards", "urls": [str(a), str(tmp_path / "." / "a.tar")]}})
    copy = shutil.copyfile(a, tmp_path / "copy.tar")
    cfg = {"name": "tar_shards", "urls": [str(a), str(copy)]}
    with pytest.raises(ValueError, match="copy.tar and .*a.tar are the same tar"):
        stages.dataset(cfg, str(tmp_path / "m.parquet"), str(tmp_path / "r.parquet"))
    b = write_tar(tmp_path / "b.tar", ["k0", "k1"], seed=5, links=[("k2.jpg", "k0.jpg")])
    stages.dataset({"name": "tar_shards", "urls": [str(a), str(b)]}, str(tmp_path / "m.parquet"),
                   str(tmp_path / "r.parquet"))
    m = pd.read_parquet(tmp_path / "m.parquet")
    assert list(m["group"]) == ["a.tar/k0", "a.tar/k1", "b.tar/k0", "b.tar/k1"]
    rejected = pd.read_parquet(tmp_path / "r.parquet")
    assert list(rejected["path"]) == [f"{b}::k2.jpg"]
    assert rejected["reason"].iat[0].startswith("symbolic link member (to k0.jpg)")


def test_verify_all_catches_a_forged_maximum_of_an_unshown_unit_one_forward_per_image(red_spot_net):
    from unitscope.verify import VerificationError, check_values

    class Images:
        def __init__(self):
            rng = np.random.default_rng(0)
            self.images = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)

        def __getitem__(self, i):
            return self.images[int(i)]

        def in_order(self, ids):
            return sorted(int(i) for i in ids)

    images = Images()
    x = torch.from_numpy(images.images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        fmap = red_spot_net(x).numpy()  # 5×2×8×8
    rows = []
    for unit in (0, 1):
        for kind, sign in (("top", 1.0), ("bottom", -1.0)):
            img = int(np.argmax([(sign * fmap[i, unit]).max() for i in range(5)]))
            flat = int(np.argmax(sign * fmap[img, unit]))
            y, xx = divmod(flat, 8)
            rows.append({"kind": kind, "unit": unit, "rank": 0, "image_id": img,
                         "activation": float(fmap[img, unit, y, xx]), "y": y, "x": xx,
                         "y0": 0, "x0": 0, "y1": 3, "x1": 3})
    rows = pd.DataFrame(rows)
    calls = []
    red_spot_net.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    table = check_values(rows, images, red_spot_net, "pool", (0, 0, 0), (1, 1, 1))
    assert table["ok"].all() and (table["erf_px"] == -1).all() and len(table) == 4
    assert sum(calls) == rows["image_id"].nunique()  # one forward per distinct image
    forged = rows.copy()
    forged.loc[(forged["unit"] == 1) & (forged["kind"] == "top"), "activation"] *= 1.1
    with pytest.raises(VerificationError, match="unit 1 top rank 0"):
        check_values(forged, images, red_spot_net, "pool", (0, 0, 0), (1, 1, 1))


def test_a_folder_with_a_symlink_loop_is_listed_and_indexed_once(tmp_path):
    from unitscope.datasets.index import folder_candidates, folder_listing

    folder = tmp_path / "photos"
    pngs(folder / "cats", 2)
    os.symlink(folder, folder / "cats" / "loop")
    os.symlink(folder / "cats", folder / "again")
    digest, count = folder_listing(folder)
    cands = folder_candidates(folder)
    assert count == len(cands) == 2
    plan = plan_of({**BASE, "dataset": {"name": "folder", "path": str(folder)}})
    assert plan.dataset_listing == digest


def test_a_raising_factory_and_weights_of_the_wrong_shape_are_one_line_before_any_job(tmp_path, monkeypatch):
    (tmp_path / "raising_factory.py").write_text(
        "import torch\n"
        "def net():\n    raise RuntimeError('no GPU driver found\\nsecond line')\n"
        "def small():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PlanError) as err:
        plan_of({**BASE, "layers": ["0"], "model": {"python": "raising_factory:net", "input_size": 32,
                                                    "weights": "none"}})
    assert str(err.value) == ("config key 'model.python': model.python: raising_factory:net raised "
                              "RuntimeError: no GPU driver found")
    wrong = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).state_dict()
    torch.save({**wrong, "extra.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(PlanError) as err:
        plan_of({**BASE, "layers": ["0"], "model": {"python": "raising_factory:small", "input_size": 32,
                                                    "weights": str(tmp_path / "w.pth")}})
    text = str(err.value)
    assert text.startswith("config key 'model.weights': weights") and "\n" not in text
    assert "unexpected keys extra.weight" in text and "0.weight: file [8, 3, 3, 3], model [4, 3, 3, 3]" in text
    with pytest.raises(PlanError, match="'model.weights'.*missing keys _conv_stem.weight"):  # a built-in too
        plan_of({**BASE, "model": {"name": "efficientnet_lite0", "weights": str(tmp_path / "w.pth")}})


def test_a_download_that_kept_nothing_does_not_say_it_kept_a_part(tmp_path):
    from unitscope.datasets.download import DownloadError, download

    with pytest.raises(DownloadError) as err:
        download("http://127.0.0.1:9/none.tgz", tmp_path / "n.tgz", retries=1, backoff_s=0.01,
                 timeout_s=1)
    assert "to resume" not in str(err.value) and "nothing was kept" in str(err.value)
    assert not list(tmp_path.glob("*.part"))


def test_a_figure_of_k_5000_at_256_px_stays_under_50_mpx_and_says_so(tmp_path):
    from unitscope.grids import MAX_FIGURE_PIXELS, FigureFacts, draw_grids
    from test_patches_and_grids import solid_patches

    colors = {u: (7 * u, 100, 250 - 7 * u) for u in range(36)}
    patches = solid_patches(tmp_path, colors, 100)
    pd.DataFrame({"layer": "L", "unit": list(colors), "max": 1.0, "min": 0.0, "dead": False,
                  "saturated": False, "n_at_max": 1}).to_parquet(tmp_path / "units.parquet")
    draw_grids(patches, tmp_path / "units.parquet", {"units": list(colors), "why": {}},
               tmp_path / "L.png", tmp_path / "L", display_px=256, k=5000, panels="patches",
               facts=FigureFacts(layer="L", shape=(36, 8, 8), rf=(4, 4), input_size=16))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        fig = Image.open(tmp_path / "L.png")
        assert fig.width * fig.height <= MAX_FIGURE_PIXELS
        text_row = np.asarray(fig.convert("L"))[:200]
    assert (text_row < 128).any()
    from unitscope.grids import drawn_per_unit

    n = drawn_per_unit(5000, 256, 36, 1, False)
    assert 1 < n < 64
    from unitscope.grids import header_lines

    facts = FigureFacts(layer="L", shape=(36, 8, 8), rf=(4, 4), input_size=16, k=5000, display_px=256)
    assert f"first {n} of k=5000 (at 256 px, more would make the figure over 50 Mpx" in \
        "\n".join(header_lines(facts, ["top"], n, 100, 36, "patches"))


def test_a_member_that_cannot_be_read_is_named_with_its_tar(tmp_path):
    from types import SimpleNamespace

    tar = write_tar(tmp_path / "train-000.tar", ["a"])
    with tarfile.open(tar) as t:
        m = t.getmember("a.jpg")
    data = bytearray(tar.read_bytes())
    data[m.offset_data:m.offset_data + m.size] = b"\0" * m.size  # the member's bytes destroyed
    tar.write_bytes(bytes(data))
    row = SimpleNamespace(path=str(tar), member="a.jpg", member_offset=m.offset_data,
                          member_size=m.size, crop_left=None)
    with pytest.raises(ValueError, match=r"tar shard .*train-000.tar member a.jpg: cannot read the image"):
        load_image(row, Preprocessing(40, 32))
