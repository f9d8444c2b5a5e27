"""Files written through ``clinlm.io``'s atomic helpers follow the umask, like a plain open."""

from __future__ import annotations

import os
import stat


def test_atomic_dir_gives_every_file_the_umask_mode(tmp_path):
    from clinlm.io import atomic_dir
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            (tmp / "model.safetensors").chmod(0o600)  # a library's private temp file, renamed
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "a.json").write_text("{}")
            (tmp / "sub" / "a.json").chmod(0o600)
    finally:
        os.umask(old)
    mode = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in [tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert mode == {"out": 0o755, "out/model.safetensors": 0o644, "out/sub": 0o755,
                    "out/sub/a.json": 0o644}


def test_parquet_written_on_one_thread_has_pandas_bytes(tmp_path):
    """write_parquet/read_parquet keep Arrow's thread pool unused (a pool alive at exit can
    abort a finished stage) and change nothing: the bytes of pandas' own to_parquet, attrs
    included, and the same frame back."""
    import numpy as np
    import pandas as pd

    from clinlm.io import read_parquet, write_parquet
    df = pd.DataFrame({"id": [str(i) for i in range(300)], "x": np.linspace(0, 1, 300),
                       "c": pd.Categorical(["a", "b", "c"] * 100), "n": [None, 1.5, 2.0] * 100})
    df.attrs = {"source": "test"}
    df.to_parquet(tmp_path / "pandas.parquet", index=False)
    write_parquet(tmp_path / "ours.parquet", df)
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "pandas.parquet").read_bytes()
    back = read_parquet(tmp_path / "ours.parquet")
    pd.testing.assert_frame_equal(back, pd.read_parquet(tmp_path / "pandas.parquet"))
    assert read_parquet(tmp_path / "ours.parquet", columns=["id"]).shape == (300, 1)
