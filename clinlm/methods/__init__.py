"""Registry of methods: ``params.yaml`` names one per model entry (``method: sft``)."""

from __future__ import annotations

from clinlm.config import import_object
from clinlm.methods.base import CLASSIFICATION, REGRESSION, Method, Run

# name -> "module:Class"; modules are imported only when the method is used.
REGISTRY: dict[str, str] = {
    "sft": "clinlm.methods.sft:SFTMethod",
    "head": "clinlm.methods.head:HeadMethod",
    "vlm": "clinlm.methods.vlm:VLMMethod",
    "cohere": "clinlm.methods.cohere:CohereMethod",
    "gbdt": "clinlm.methods.gbdt:GBDTMethod",
    "stack": "clinlm.methods.stack:StackMethod",
}


def get_method(name: str) -> Method:
    """Instantiate the method registered under ``name``."""
    return import_object(REGISTRY, name, "method")()


__all__ = ["CLASSIFICATION", "REGRESSION", "Method", "Run", "REGISTRY", "get_method"]
