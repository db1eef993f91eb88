"""Which units a layer's figures show, chosen once (by the `shown` job) and read by every stage
that needs it: projections, verification, figures, gallery.

`shown/L.json`: {"layer", "units": [ids in display order], "pick", "why": {unit: reason},
"notes": [sentences for the figure], "dead": [units that never fire on this dataset]}."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from .atomic import atomic_path

PICKS = ("top", "random", "first", "pure", "frequent", "rare")
NEVER_FIRES = "never fires on this dataset"


def select_units(units: pd.DataFrame, how_many: int | list[int], pick: str = "top",
                 seed: int = 0) -> tuple[list[int], dict[int, str], list[str]]:
    """(units in display order, why each is shown, notes): `how_many` units chosen by `pick` among
    the units that fire (top by max activation, random with `seed`, first by id, pure by label
    purity, frequent / rare by the share of images they fire on), or an explicit list of ids."""
    n = len(units)
    dead = units["dead"].to_numpy(bool) if "dead" in units else (units["max"].to_numpy() <= 0)
    if isinstance(how_many, (list, tuple)):
        bad = [int(u) for u in how_many if not 0 <= int(u) < n]
        if bad:
            raise ValueError(f"units {bad} do not exist: this layer has units 0..{n - 1}")
        why = {int(u): NEVER_FIRES if dead[int(u)] else "listed in the config" for u in how_many}
        return [int(u) for u in how_many], why, []
    if how_many < 1:
        raise ValueError(f"units must be at least 1, got {how_many}")
    if how_many > n:
        raise ValueError(f"units: {how_many} asked for but this layer has only {n} channels")
    if pick not in PICKS:
        raise ValueError(f"pick {pick!r}; valid: {', '.join(PICKS)}")
    alive = units[~dead]
    notes = []
    if len(alive) < how_many:
        notes.append(f"{how_many} units asked for, {len(alive)} of {n} fire on this dataset")
    take = min(how_many, len(alive))
    if pick == "top":
        order = alive.sort_values(["max", "unit"], ascending=[False, True])
        chosen = [int(u) for u in order["unit"][:take]]
        why = {u: f"#{i + 1} by max activation" for i, u in enumerate(chosen)}
    elif pick == "random":
        ids = alive["unit"].to_numpy()
        chosen = sorted(int(u) for u in np.random.default_rng(seed).choice(ids, take, replace=False))
        why = {u: f"random (seed {seed})" for u in chosen}
    elif pick == "first":
        chosen = [int(u) for u in alive["unit"][:take]]
        why = {u: "lowest id among the units that fire" for u in chosen}
    elif pick == "pure":
        if "purity" not in alive or alive["purity"].isna().all():
            raise ValueError("pick: pure needs labels: this dataset has none")
        order = alive.sort_values(["purity", "max", "unit"], ascending=[False, False, True])
        chosen = [int(u) for u in order["unit"][:take]]
        why = {int(r.unit): f"{r.purity:.0%} of its top images are {r.label}"
               for r in order[:take].itertuples()}
    else:  # frequent / rare: by the share of images the unit fires on
        order = alive.sort_values(["frac_active", "unit"], ascending=[pick == "rare", True])
        chosen = [int(u) for u in order["unit"][:take]]
        why = {int(r.unit): f"fires on {r.frac_active:.1%} of the images"
               for r in order[:take].itertuples()}
    return chosen, why, notes


def write_shown(units_path: str | os.PathLike, out_path: str | os.PathLike,
                how_many: int | list[int], pick: str, seed: int) -> list[int]:
    """Choose a layer's shown units from its units table and write shown/L.json."""
    units = pd.read_parquet(units_path)
    layer = str(units["layer"].iat[0]) if len(units) else ""
    chosen, why, notes = select_units(units, how_many, pick, seed)
    dead = [int(u) for u in units.loc[units["dead"], "unit"]] if "dead" in units else []
    doc = {"layer": layer, "units": chosen, "pick": pick if not isinstance(how_many, (list, tuple)) else "listed",
           "why": {str(u): w for u, w in why.items()}, "notes": notes, "dead": dead}
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return chosen


def read_shown(path: str | os.PathLike) -> dict:
    """A shown/L.json document (units as ints)."""
    doc = json.loads(open(path).read())
    doc["why"] = {int(k): v for k, v in doc.get("why", {}).items()}
    return doc
