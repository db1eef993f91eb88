"""A short hash of the package version and the source of the modules a stage runs, given to
Snakemake as a param so that changing a stage's code reruns exactly the jobs that depend on it."""
from __future__ import annotations

import hashlib
import importlib.util

from . import __version__

MODEL_MODULES = ["unitscope.models", "unitscope.models.configs", "unitscope.models.classic",
                 "unitscope.models.resnet", "unitscope.models.efficientnet_lite",
                 "unitscope.models.torchscript"]
# Which modules' code decides each stage's output.
STAGE_MODULES: dict[str, list[str]] = {
    "dataset": ["unitscope.datasets", "unitscope.datasets.sample", "unitscope.datasets.index",
                "unitscope.datasets.sources", "unitscope.datasets.download",
                "unitscope.datasets.extract", "unitscope.inputs"],
    "inputs": ["unitscope.inputs", "unitscope.models", "unitscope.models.configs"],
    "layers": ["unitscope.layers", "unitscope.receptive_field", "unitscope.geometry", *MODEL_MODULES],
    "activations": ["unitscope.activations", *MODEL_MODULES],
    "topk": ["unitscope.topk", "unitscope.unit_stats", "unitscope.geometry"],
    "patches": ["unitscope.patches"],
    "grids": ["unitscope.grids", "unitscope.patches"],
    "gallery": ["unitscope.gallery"],
    "projections": ["unitscope.projections", "unitscope.patches", *MODEL_MODULES],
}


def stage_fingerprint(stage: str) -> str:
    """12 hex digits that change whenever the package version or the stage's code changes."""
    h = hashlib.sha256(__version__.encode())
    for module in STAGE_MODULES[stage]:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ValueError(f"stage {stage!r}: module {module} not found")
        with open(spec.origin, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]
