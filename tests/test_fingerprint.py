"""Code fingerprints are derived from what a stage really imports: checked against the modules a
stage loads when it runs, and by editing a copy of the package."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import REPO
from unitscope.fingerprint import imported_modules, stage_modules

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from unitscope import fingerprint
print(json.dumps({s: fingerprint.stage_fingerprint(s) for s in sys.argv[2:]}))
"""


def test_imports_are_read_wherever_they_stand():
    text = """
import os
import unitscope.topk
from . import atomic
from .models import ModelConfig
from ..elsewhere import thing

def f():
    from unitscope.datasets import sources
    return "unitscope.models.resnet:resnet18", "not:a factory", "unitscope.nowhere:f"
"""
    found = imported_modules(text, "unitscope.stages")
    assert found == {"unitscope", "unitscope.topk", "unitscope.atomic", "unitscope.models",
                     "unitscope.datasets", "unitscope.datasets.sources", "unitscope.models.resnet"}


def test_every_module_a_stage_loads_when_it_runs_is_in_its_fingerprint(tmp_path):
    """The oracle: run the layers stage in a fresh Python and list the unitscope modules loaded."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from unitscope import stages
stages.layers({{"name": "zfnet", "weights": "none"}}, ["conv1"], {str(tmp_path / "t.parquet")!r})
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "unitscope")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "unitscope.models.classic" in loaded  # the factory the models table names as a string
    assert loaded - {"unitscope.stages"} <= set(stage_modules("layers"))


def test_editing_a_module_changes_the_fingerprint_of_exactly_the_stages_that_reach_it(tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(REPO / "unitscope", copy / "unitscope",
                    ignore=shutil.ignore_patterns("__pycache__"))
    stages = ["dataset", "activations", "projections", "grids", "shown"]

    def fingerprints() -> dict:
        out = subprocess.run([sys.executable, "-c", PROBE, str(copy), *stages],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    before = fingerprints()
    # a built-in architecture, imported by name from the models table
    with open(copy / "unitscope/models/efficientnet_lite.py", "a") as f:
        f.write("\n# an edit\n")
    after = fingerprints()
    assert {s for s in stages if after[s] != before[s]} == {"activations", "projections", "grids"}
    # the choice of shown units: every stage that reads shown/L.json, the projections included
    with open(copy / "unitscope/shown.py", "a") as f:
        f.write("\n# an edit\n")
    again = fingerprints()
    assert {s for s in stages if again[s] != after[s]} == {"shown", "projections", "grids"}
    # a page template: the gallery's two stages, nothing else
    stages2 = ["gallery_layer", "gallery_index", "grids", "topk"]
    out = subprocess.run([sys.executable, "-c", PROBE, str(copy), *stages2], capture_output=True,
                         text=True, check=True)
    first = json.loads(out.stdout)
    with open(copy / "unitscope/templates/unit.html", "a") as f:
        f.write("\n{# an edit #}\n")
    out = subprocess.run([sys.executable, "-c", PROBE, str(copy), *stages2], capture_output=True,
                         text=True, check=True)
    second = json.loads(out.stdout)
    assert {s for s in stages2 if second[s] != first[s]} == {"gallery_layer", "gallery_index"}
