"""Train/test split: stratified, seeded, optionally keeping each patient on one side."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split


def split_table(df: pd.DataFrame, test_size: float, seed: int, group_by_patient: bool,
                task_type: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (train, test).

    Classification and multiclass stratify on ``label``; regression on label quintiles. A
    multiclass label missing from the training side is an error naming it (a model cannot
    learn, nor be scored fairly on, a class it never saw). With
    ``group_by_patient`` every ``group`` (patient) lands on one side only, so the test
    set measures how the model does on *new* patients rather than on patients whose other
    appointments it has already seen (StratifiedGroupKFold with round(1/test_size) folds;
    fold 0 is the test set).
    """
    if not 0 < test_size < 1:
        raise ValueError(f"split.test_size must be in (0, 1), got {test_size}")
    if task_type in ("classification", "multiclass"):
        strata = df["label"].astype(str).to_numpy()
    else:
        strata = pd.qcut(df["label"].astype(float), q=5, labels=False, duplicates="drop").to_numpy()
    if group_by_patient:
        n_splits = max(2, int(round(1 / test_size)))
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, test_idx = next(cv.split(np.zeros(len(df)), strata, groups=df["group"].to_numpy()))
        mask = np.zeros(len(df), dtype=bool)
        mask[test_idx] = True
        train, test = df[~mask], df[mask]
    else:
        train, test = train_test_split(df, test_size=test_size, random_state=seed,
                                       stratify=strata)
    if task_type == "multiclass":
        unseen = sorted(set(test["label"].astype(str)) - set(train["label"].astype(str)))
        if unseen:
            raise ValueError(f"label(s) {unseen} fell in the test split only (every row of "
                             "theirs belongs to the test patients): add rows, merge the label, "
                             "or set split.group_by_patient: false")
    return train.reset_index(drop=True), test.reset_index(drop=True)
