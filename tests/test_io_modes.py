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
