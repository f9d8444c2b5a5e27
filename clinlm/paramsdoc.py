"""The params reference (``docs/params_reference.md``), generated from the typed configs.

Every project section of ``params.yaml`` has one pydantic model holding its keys and defaults
(ARCHITECTURE.md "Defaults: one home per section"); this page lists each key with its type,
default and meaning, the meaning taken from the field's ``description`` or, failing that,
the comment on its line (``key: type = default  # meaning``) or the comment lines right above
it.
``python -m clinlm.paramsdoc`` rewrites the page; ``tests/test_params_reference.py`` fails
when it is out of date. Library sections (``bnb``, ``lora``, ``training``, ``sft``,
``dynamo``) are the libraries' own fields, named as they name them: their documentation is
theirs (docs/params.md links it).
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

from clinlm.config import import_object

#: (where in params.yaml, "module:Class") in the page's order
SECTIONS: list[tuple[str, str]] = [
    ("base_models.<name>", "clinlm.config:BaseModelConfig"),
    ("vlm_bases.<name>", "clinlm.config:VLMBaseConfig"),
    ("tasks.<task>", "clinlm.tasks:TaskSection"),
    ("tasks.<task>.split", "clinlm.tasks:SplitConfig"),
    ("tasks.<task>.format", "clinlm.tasks:FormatConfig"),
    ("tasks.<task>.prompt", "clinlm.tasks:PromptConfig"),
    ("tasks.<task>.answer", "clinlm.tasks:AnswerConfig"),
    ("tasks.<task>.images", "clinlm.tasks:ImagesConfig"),
    ("tasks.noshow.download", "clinlm.noshow.sources:NoshowDownload"),
    ("tasks.noshow.statements", "clinlm.noshow.task:NoshowStatements"),
    ("tasks.vascular_age.download", "clinlm.vascular.task:VascularDownload"),
    ("tasks.vascular_age.download.columns.<column>", "clinlm.vascular.csvsource:CsvColumn"),
    ("tasks.vascular_age.statements", "clinlm.vascular.task:VascularStatements"),
    ("tasks.<table>.download (kind: table)", "clinlm.table.task:TableDownload"),
    ("tasks.<table>.download.columns.<column>", "clinlm.table.columns:ColumnSpec"),
    ("tasks.<table>.statements", "clinlm.table.task:TableStatements"),
    ("predict", "clinlm.config:PredictStageConfig"),
    ("runs.<method>.<run>", "clinlm.config:RunSpec"),
    ("models.<m> (sft)", "clinlm.methods.sft:SFTModelConfig"),
    ("models.<m> (head)", "clinlm.methods.head:HeadModelConfig"),
    ("models.<m> (vlm)", "clinlm.methods.vlm:VLMModelConfig"),
    ("models.<m>.predict (sft, head)", "clinlm.llm.config:PredictConfig"),
    ("models.<m>.predict (vlm)", "clinlm.methods.vlm:VLMPredictConfig"),
    ("models.<m>.image (vlm)", "clinlm.methods.vlm:ImageAugmentConfig"),
    ("models.<m>.launch", "clinlm.llm.config:LaunchConfig"),
    ("models.<m>.validation", "clinlm.llm.config:ValidationConfig"),
    ("models.<m> (gbdt)", "clinlm.methods.gbdt:GBDTModelConfig"),
    ("models.<m> (stack)", "clinlm.methods.stack:StackModelConfig"),
    ("models.<m> (cohere)", "clinlm.cohere_client:CohereModelConfig"),
]
PAGE = Path("docs") / "params_reference.md"
_TYPES = re.compile(r"typing\.|clinlm\.[\w.]+\.|<class '|'>")


def source_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line, or the comment lines right above it, in ``cls``
    and its project bases (a subclass's own comment wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("clinlm"):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            m = re.match(r"\s+(\w+)\s*:\s*[^#]*?(?:#\s*(.*))?$", line)
            doc = re.match(r"\s+#:?\s?(.*)$", line)
            if doc:
                above.append(doc.group(1).strip())
            elif m and not line.strip().startswith(("def ", "@", "return", "#")):
                text = (m.group(2) or "").strip() or " ".join(above)
                if text:
                    out[m.group(1)] = text
                above = []
            else:
                above = []
    return out


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or _TYPES.sub("", str(annotation))
    text = re.sub(r"Annotated\[(\w+), [^\]]*\]", r"\1", text)  # PositiveInt -> int
    text = re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)
    m = re.fullmatch(r"Union\[(.*)\]", text)
    text = " | ".join(p.strip() for p in m.group(1).split(",")) if m else text
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if hasattr(value, "model_dump"):
        return "(its section)"
    return f"`{value!r}`".replace("|", "\\|")


def section_table(where: str, cls: type) -> str:
    """One section's keys as a markdown table."""
    comments = source_comments(cls)
    own = cls.__dict__.get("__doc__") or ""  # not a base's ("Unknown keys are errors")
    doc = inspect.cleandoc(own).split("\n\n")[0].replace("\n", " ")
    lines = [f"## `{where}`", "", f"{doc} (`{cls.__module__}.{cls.__name__}`)", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        meaning = (field.description or comments.get(name, "")).replace("|", "\\|")
        meaning = meaning.replace("\n", " ")
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {meaning} |")
    return "\n".join(lines)


def render() -> str:
    """The whole page."""
    head = ["# params.yaml reference", "",
            "Generated by `python -m clinlm.paramsdoc` from the typed configs (the one home of "
            "each key and its default); `tests/test_params_reference.py` keeps it current. "
            "What the sections are for, with examples: [params.md](params.md). Library "
            "sections (`bnb`, `lora`, `training`, `sft`, `dynamo`) take the libraries' own "
            "fields and are checked against them.", ""]
    body = [section_table(where, import_object({"x": path}, "x", "config"))
            for where, path in SECTIONS]
    return "\n".join(head) + "\n" + "\n\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> int:
    from clinlm.io import atomic_path

    out = Path(argv[0]) if argv else PAGE
    with atomic_path(out) as tmp:
        tmp.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
