"""The fault suite: every way a cache or an input could hand back a wrong result, and every user
mistake that used to end in a traceback, each asserted to end in one line that names the file or
the key — with no table written from bad data and nothing changed outside the run's folders.
(Config mistakes: test_plan.py; downloads: test_downloads.py; the whole workflow: test_workflow.py.)"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, plan_of
from test_topk import random_data, write_stage_inputs
from unitscope.atomic import HOST, atomic_path
from unitscope.plan import PlanError
from unitscope.provenance import StaleFileError
from unitscope.topk import select_topk


@pytest.fixture
def shards(tmp_path):
    n, c = 24, 3
    values, _, ys, xs, score = random_data(n, c, seed=1)
    arrays = {"max": values, "argmax_y": ys, "argmax_x": xs, "mean": score}
    manifest, paths = write_stage_inputs(tmp_path, n, c, 3, arrays)
    want, _, _ = select_topk(paths, manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet", "L")
    return tmp_path, manifest, paths, want


def topk_of(tmp_path, manifest, paths):
    out = tmp_path / "out" / "topk.parquet"
    try:
        return select_topk(paths, manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet",
                           "L", topk_out=out)[0]
    finally:
        assert not out.exists() or out.stat().st_size > 0


def fails(tmp_path, manifest, paths, bad_path, *phrases):
    with pytest.raises(StaleFileError) as e:
        topk_of(tmp_path, manifest, paths)
    message = str(e.value)
    assert "\n" not in message and str(bad_path) in message
    assert f"rebuild it with: snakemake --forcerun {bad_path}" in message
    for phrase in phrases:
        assert phrase in message, message
    assert not (tmp_path / "out" / "topk.parquet").exists()  # no table from bad data


def test_a_copy_of_another_shard_is_refused(shards):
    tmp_path, manifest, paths, want = shards
    shutil.copy(paths[0], paths[1])  # shard-000 put in place of shard-001
    fails(tmp_path, manifest, paths, paths[1], "shard is 0, expected 1")


def test_overwritten_values_are_refused(shards):
    tmp_path, manifest, paths, want = shards
    with h5py.File(paths[2], "r+") as f:
        f["max"][3, 1] = 1e30
    fails(tmp_path, manifest, paths, paths[2], "its values are not the ones it was written with")


def test_a_damaged_header_and_a_truncated_file_are_refused(shards):
    tmp_path, manifest, paths, want = shards
    data = paths[1].read_bytes()
    paths[1].write_bytes(b"\0" * 64 + data[64:])
    fails(tmp_path, manifest, paths, paths[1], "cannot be read as HDF5")
    paths[1].write_bytes(data[: len(data) // 2])
    fails(tmp_path, manifest, paths, paths[1], "cannot be read as HDF5")
    paths[1].write_bytes(data)  # the rebuilt file: the same table as before
    pd.testing.assert_frame_equal(topk_of(tmp_path, manifest, paths), want)


def test_a_shard_of_another_dataset_or_model_is_refused(shards, tmp_path):
    tmp_path, manifest, paths, want = shards
    with h5py.File(paths[0], "r+") as f:
        f.attrs["manifest_sha256"] = "0" * 64
    fails(tmp_path, manifest, paths, paths[0], "manifest_sha256 is '000")
    from unitscope.provenance import file_sha256

    with h5py.File(paths[0], "r+") as f:
        f.attrs["manifest_sha256"] = file_sha256(manifest)
    with pytest.raises(StaleFileError, match="shard-000.h5: model_key is '', expected 'abc'"):
        select_topk(paths, manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet", "L",
                    model_key="abc")


def test_a_gap_in_the_image_ids_and_a_missing_shard_are_refused(shards):
    tmp_path, manifest, paths, want = shards
    with h5py.File(paths[1], "r+") as f:
        ids = f["image_id"][:]
        f["image_id"][0] = ids[0] + 100
    fails(tmp_path, manifest, paths, paths[1], "holds 8 images (108..15), but shard 1 of the manifest is 8 images (8..15)")
    with h5py.File(paths[1], "r+") as f:
        f["image_id"][0] = ids[0]
    paths[2].unlink()
    with pytest.raises(StaleFileError, match="shard-002.h5: is missing"):
        topk_of(tmp_path, manifest, paths)


def test_non_finite_activations_are_refused_naming_unit_and_image(tmp_path):
    values, _, ys, xs, score = random_data(12, 2, seed=3)
    values[5, 1] = np.nan
    manifest, paths = write_stage_inputs(tmp_path, 12, 2, 2, {"max": values})
    fails(tmp_path, manifest, paths, paths[0], "non-finite max (nan) for unit 1 of image 5")


def test_a_layer_whose_output_is_a_tuple_is_refused_by_module_name(tmp_path, monkeypatch):
    (tmp_path / "tuple_model.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Split(nn.Module):
            def forward(self, x):
                return torch.split(x, 2, dim=1)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.split = Split()
                self.head = nn.Conv2d(2, 2, 1)

            def forward(self, x):
                a, b = self.split(self.conv(x))
                return self.head(a)

        def net():
            return Net()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PlanError) as e:
        plan_of({"model": {"python": "tuple_model:net", "input_size": 16, "weights": "none"},
                 "layers": ["split"]})
    assert str(e.value) == ("config key 'layers': layer 'split' (module 'split') returns a tuple, "
                            "not a feature-map tensor; choose the submodule that makes the tensor you want")


def test_leftover_temporary_files_of_killed_writers_are_removed(tmp_path):
    out = tmp_path / "res" / "table.parquet"
    writer = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from unitscope.atomic import atomic_path
        with atomic_path({str(out)!r}) as tmp:
            tmp.write_text("half")
            print("writing", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)  # no chance to clean up
    p.wait()
    left = list(out.parent.glob(".table.parquet.tmp-*"))
    assert len(left) == 1 and not out.exists()
    # a live writer's temporary file (here our parent process's) is left alone
    alive = out.parent / f".table.parquet.tmp-{HOST}-{os.getppid()}"
    alive.write_text("still being written")
    with atomic_path(out) as tmp:
        tmp.write_text("done")
    assert out.read_text() == "done"
    assert not left[0].exists() and alive.exists()


def test_a_full_disk_is_one_line_no_crash_and_no_half_written_file(tmp_path):
    """The inputs stage writing into a 1 MiB filesystem (a tmpfs in a private mount namespace):
    a one-line error naming the output, exit status 1 (not a segfault), nothing left behind; the
    same with the free-space check bypassed, so that the write itself fails midway."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a small filesystem")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(30):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    from unitscope import stages

    stages.dataset({"name": "folder", "path": str(imgs)}, str(tmp_path / "m.parquet"), str(tmp_path / "r.parquet"))
    run = ("import sys; sys.path.insert(0, {repo!r}); import unitscope.inputs as i; {patch}"
           "from unitscope.cli import main; sys.exit(main(['inputs', '--manifest', {m!r}, "
           "'--model', 'efficientnet_lite0', '--out', {out!r}, '--shard', '0', '--shards', '1']))")
    for patch in ("", "i.check_free_space = lambda *a: None; "):
        code = run.format(repo=str(REPO), patch=patch, m=str(tmp_path / "m.parquet"),
                          out=str(mnt / "inputs.h5"))
        script = f"mount -t tmpfs -o size=1m tmpfs {mnt} && {sys.executable} -c \"{code}\"; echo status=$?"
        r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script],
                           capture_output=True, text=True, timeout=120)
        if "mount:" in r.stderr and "status=" not in r.stdout:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        assert "status=1" in r.stdout, (r.stdout, r.stderr)
        errors = [line for line in r.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and f"no space left on device writing {mnt}/inputs.h5" in errors[0]
        assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr
    assert list(mnt.iterdir()) == []  # the tmpfs is gone with its namespace; nothing leaked here
