"""Mycroft from Python, without TOML: two data owners served from this process, a trainer that
asks both for rows, and its report. README.md's "From Python" section shows this code.

    .venv/bin/python examples/notebook.py     # about 30 s on 2 cores; writes runs/notebook/

The trainer's model has seen few 3s and 8s. owner-a holds a natural mix of digits, owner-b none
of those two. The same calls work in a notebook, where `report` shows a summary table.
"""

import numpy as np
from sklearn.datasets import load_digits

import mycroft

digits = load_digits()
X = (digits.images / 16).astype("float32")[:, None]  # 1,797 images of shape (1, 8, 8)
y = digits.target
rows = np.random.default_rng(0).permutation(len(y))
train, val, test, pool = rows[:450], rows[450:750], rows[750:1050], rows[1050:]
scarce = np.isin(y, [3, 8])
train = train[~scarce[train] | (np.arange(len(train)) % 6 == 0)]  # one 3 or 8 in six kept
mixed, other = pool[:350], pool[350:][~scarce[pool[350:]]]

with (
    mycroft.Owner.from_arrays("owner-a", X[mixed], y[mixed], budget=100) as owner_a,
    mycroft.Owner.from_arrays("owner-b", X[other], y[other], budget=100) as owner_b,
):
    report = mycroft.acquire(
        (X[train], y[train]),
        (X[test], y[test]),
        val=(X[val], y[val]),  # D_hard: the baseline's mistakes on these, among 3s and 8s
        owners=[owner_a, owner_b],
        dhard_classes=["3", "8"],
        budgets=[16],
        epochs=10,  # fewer leave a weak baseline that forgets other digits when fine-tuned
        run_dir="runs/notebook",
    )
    print(owner_a.ledger()["budget"])  # what the trainer spent at owner-a

print(report.ranking)  # owners, best first
print(report.summary)  # whom to pay, and why not the others
print(report.to_dataframe()[["owner", "method", "dhard_gain", "test_gain", "rows_received"]])
print("page:", report.save("runs/notebook/report.html"))
