"""Registry of methods: ``params.yaml`` names one per model entry (``method: sft``).

One line per method: its name and its class, by name, so that importing the registry imports
no method (a stage depends only on its own method's code). What each method is -- its config
class, LLM or not, exportable, askable, a stack member -- is declared on its class
(:class:`clinlm.methods.interface.Method`) and read through :func:`method_class`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from clinlm.config import ModelCommon, import_object
from clinlm.methods.interface import CLASSIFICATION, MULTICLASS, REGRESSION, Method, Run

# name -> "module:Class"; modules are imported only when the method is used.
REGISTRY: dict[str, str] = {
    "sft": "clinlm.methods.sft:SFTMethod",
    "head": "clinlm.methods.head:HeadMethod",
    "vlm": "clinlm.methods.vlm:VLMMethod",
    "cohere": "clinlm.methods.cohere:CohereMethod",
    "gbdt": "clinlm.methods.gbdt:GBDTMethod",
    "stack": "clinlm.methods.stack:StackMethod",
}


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registry order."""
    return tuple(REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered under ``name`` (its module imported now); an unknown name is a
    ``KeyError`` listing the known ones."""
    return import_object(REGISTRY, name, "method")


def get_method(name: str) -> Method:
    """Instantiate the method registered under ``name``."""
    return method_class(name)()


_LOADED: dict[tuple[str, str, str, int], Callable[[pd.DataFrame], pd.DataFrame]] = {}
_LOAD_LOCK = threading.RLock()  # re-entrant: a stack loads its members inside its own load


def load_once(run: Run) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """``run``'s model loaded once per process (:meth:`Method.load`), shared by everything that
    holds it: a server answering an sft run and the stack that has it as a member keeps ONE
    copy. Keyed by task, model and model folder (and the folder's time: a retrained model is
    loaded anew). Calls into one loaded model are serialised (a lock per model): a server's
    threads never run the same torch model concurrently, whichever run they answer."""
    folder = Path(run.model_dir).resolve()
    key = (run.task, run.model, str(folder), folder.stat().st_mtime_ns if folder.exists() else 0)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _serialised(get_method(run.cfg["method"]).load(run))
        return _LOADED[key]


def _serialised(fn: Callable[[pd.DataFrame], pd.DataFrame]
                ) -> Callable[[pd.DataFrame], pd.DataFrame]:
    lock = threading.Lock()

    def call(df: pd.DataFrame) -> pd.DataFrame:
        with lock:
            return fn(df)
    return call


def model_config_class(method: str) -> type[ModelCommon]:
    """The typed config of ``models.<m>`` for ``method`` (its class's ``config``)."""
    return method_class(method).config


__all__ = ["CLASSIFICATION", "MULTICLASS", "REGRESSION", "Method", "Run", "REGISTRY",
           "get_method", "load_once", "method_class", "method_names", "model_config_class"]
