"""The pipeline's stage scripts, run by dvc.yaml as ``python -m stages.<name>`` from the repo root.

``-m`` puts the current directory first on ``sys.path``, so ``import clinlm`` resolves to the
``clinlm/`` of the checkout the stage runs in (the main workspace, or the temporary copy of
``dvc exp run --temp`` / ``--queue``), ahead of the editable install's finder, which maps
``clinlm`` to the folder ``pip install -e .`` was run in and is consulted only after ``sys.path``.
"""
