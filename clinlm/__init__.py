"""clinlm: fine-tune language models on tabular clinical data, reproducibly (DVC)."""

__version__ = "0.1.0"
