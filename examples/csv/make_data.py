"""Write the bring-your-own-CSV example's two tables, deterministically.

    .venv/bin/python examples/csv/make_data.py [OUT_DIR]
    (default OUT_DIR: this folder, i.e. it rewrites machines-trainer.csv and machines-site-south.csv)

Machine readings from two sites. Each row: `machine_id` (unique over both files), `site`
(text), six numeric readings and `condition` (ok / worn / failing). At the south site the
machines run faster (higher `rpm`) and wear shows in different readings than in the north, so a
model trained on northern machines misjudges southern ones: a sub-population.

- machines-trainer.csv: the trainer's own rows, almost all from the north site.
- machines-site-south.csv: the owner "site-south", mostly southern machines.

Only numpy is used and the seed is fixed, so the files are identical on every machine; a test
checks that the committed files match this script.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20241008
CONDITIONS = ("ok", "worn", "failing")
READINGS = ("temperature", "vibration", "pressure", "current", "rpm", "age_years")
HEADER = ("machine_id", "site", *READINGS, "condition")
# file name -> (northern rows, southern rows)
FILES = {
    "machines-trainer.csv": (420, 30),
    "machines-site-south.csv": (60, 300),
}


def _machines(rng: np.random.Generator, site: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n machines of one site: readings (n, 6) and condition indices (n,)."""
    x = rng.normal(size=(n, len(READINGS)))
    if site == "north":
        wear = 1.0 * x[:, 1] + 0.6 * x[:, 0]  # vibration and temperature show wear
    else:
        x[:, 4] += 2.5  # southern machines run faster
        wear = 1.0 * x[:, 3] - 0.7 * x[:, 2]  # current up, pressure down
    wear += 0.25 * rng.normal(size=n)
    # Fixed thresholds (terciles of the noise-free wear score), the same at both sites.
    condition = np.digitize(wear, [-0.5, 0.5])
    return x, condition


def write_tables(out_dir: Path = HERE) -> list[Path]:
    rng = np.random.default_rng(SEED)
    written = []
    next_id = 1000
    for name, (north, south) in FILES.items():
        rows = []
        for site, n in (("north", north), ("south", south)):
            x, condition = _machines(rng, site, n)
            for readings, c in zip(x, condition, strict=True):
                rows.append([site, *(f"{v:.3f}" for v in readings), CONDITIONS[c]])
        order = rng.permutation(len(rows))  # sites interleaved, as a real export would be
        path = out_dir / name
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(HEADER)
            for i in order:
                writer.writerow([next_id, *rows[i]])
                next_id += 1
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for path in write_tables(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
