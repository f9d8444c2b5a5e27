"""``python -m clinlm ask``: ask a trained run about ONE case given as fields.

``python -m clinlm ask --run noshow-smollm2-sft --field age=34 --field sex=F ...`` (or
``--json '{...}'`` / ``--json-file f``) prints the answer with its probability (classification:
``p_yes`` and the Yes/No decision at ``predict.threshold``; multiclass: every label's
probability) or its 90 % interval (regression), and the statement the model saw.
``--format json`` prints the same as one JSON object. ``--list-fields`` prints the fields the
run's task takes (without loading the model). Bad input: a message naming the field and the
rule, exit code 2, no traceback; library notices (not errors) are silenced
(:func:`clinlm.predict.quiet_libraries`).

The loaded-once model that answers (shared with ``serve``) is :class:`clinlm.predictor.Predictor`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clinlm.predictor import AskError, Predictor, answers, list_fields, refusal

__all__ = ["AskError", "Predictor", "answers", "list_fields", "refusal", "main"]

log = logging.getLogger(__name__)


# ---- the command line ------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_BOOL = {"true": True, "yes": True, "false": False, "no": False}


def coerce(value: str, field: Mapping[str, Any] | None) -> Any:
    """A ``--field k=v`` string -> the JSON type its field kind takes (numbers, booleans).

    A string that does not parse is passed on unchanged: the task's validation then names
    the field and says what it expected.
    """
    kind = (field or {}).get("kind")
    v = value.strip()
    if kind == "number":
        try:
            return int(v) if _INT.fullmatch(v) else float(v)
        except ValueError:
            return value
    if kind == "bool" and not (field or {}).get("choices"):  # with choices: their strings
        return _BOOL.get(v.lower(), int(v) if v in ("0", "1") else value)
    return value


def record_from_args(args: argparse.Namespace, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The one record of ``--json`` / ``--json-file`` plus ``--field k=v`` (which win)."""
    record: dict[str, Any] = {}
    if args.json is not None or args.json_file is not None:
        where = "--json" if args.json is not None else str(args.json_file)
        try:
            text = args.json if args.json is not None else Path(args.json_file).read_text()
            record = json.loads(text)
        except OSError as e:
            raise AskError(f"{where}: cannot read: {e.strerror}", field="--json-file") from None
        except json.JSONDecodeError as e:
            raise AskError(f"{where}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                           field="--json") from None
        if not isinstance(record, dict):
            raise AskError(f"{where}: give ONE object of fields ({{\"name\": value, ...}}), "
                           f"not {type(record).__name__}", field="--json")
    by_name = {f["name"]: f for f in fields}
    seen: set[str] = set()
    for item in args.field or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AskError(f"--field {item!r}: write it as name=value", field=key or item)
        if key in seen:
            raise AskError(f"--field {key!r} given twice", field=key)
        seen.add(key)
        record[key] = coerce(value, by_name.get(key))
    return record


def format_text(p: Predictor, a: Mapping[str, Any]) -> str:
    """The human answer: question, answer with its uncertainty, and the statement."""
    d = p.describe()
    lines = [f"run:       {p.name} (task {d['task']}, method {p.method})",
             f"question:  {p.question}"]
    if p.run.task_type == "multiclass":
        if a["prediction"] is None:
            lines.append("answer:    none (the model gave no probabilities for this row)")
        else:
            ranked = sorted(a["probabilities"].items(), key=lambda kv: -(kv[1] or 0))
            lines.append(f"answer:    {a['prediction']}   ("
                         + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ")")
    elif p.classification:
        if a["p_yes"] is None:
            lines.append("answer:    none (the model gave no probability for this row)")
        else:
            lines.append(f"answer:    {a['prediction']}   p_yes = {a['p_yes']:.3f} "
                         f"(Yes when p_yes >= {a['threshold']:g})")
    else:
        interval = ("no interval (this method gives none)" if a["y_lo"] is None else
                    f"90 % interval {a['y_lo']:.1f} to {a['y_hi']:.1f}")
        lines.append(f"answer:    {a['y_pred']:.1f}   {interval}")
    lines.append(f"statement: {a['statement']}")
    lines += [f"base rate: {d['base_rate']['text']}", f"quality:   {d['metric']['text']}",
              f"decision:  {d['decision']['text']}", f"notice:    {d['notice']}"]
    return "\n".join(lines)


def _fields_text(fields: list[dict[str, Any]]) -> str:
    rows = []
    for f in fields:
        kind = f["kind"] + (f" [{f['unit']}]" if f.get("unit") else "")
        if f.get("choices"):
            kind += " one of " + "/".join(map(str, f["choices"]))
        req = "required" if f.get("required") else "optional"
        label = f.get("label") or f["name"]
        rows.append(f"  {f['name']:<22} {label:<30} {kind:<28} {req:<9} "
                    f"e.g. {f.get('example')!r}  {f.get('help', '')}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clinlm ask",
                                 description="Answer ONE appointment / subject with a trained run.")
    ap.add_argument("--run", required=True, help="runs.<method>.<name> in params.yaml, "
                                                 "e.g. noshow-smollm2-sft")
    ap.add_argument("--field", action="append", metavar="NAME=VALUE",
                    help="one input field (repeat); --list-fields shows them")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--json", help="the fields as one JSON object")
    src.add_argument("--json-file", type=Path, help="a file holding one JSON object of fields")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--list-fields", action="store_true", help="print the run's input fields")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``python -m clinlm ask``); returns the exit code."""
    from clinlm.predict import quiet_libraries

    args = build_parser().parse_args(argv)
    quiet_libraries()  # no loading bars or library notices around one answer
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        if args.list_fields:  # from params alone: no model loaded
            fields = list_fields(args.run, args.params)
            print(json.dumps(fields, indent=2) if args.format == "json" else _fields_text(fields))
            return 0
        p = Predictor(args.run, params_path=args.params)
        a = p.predict([record_from_args(args, p.fields)], source="input")[0]
        if a["status"] != "ok":
            raise AskError(f"input, row 1: {a['error']}", row=1, field=a["field"])
    except AskError as e:
        if args.format == "json":
            print(json.dumps(e.to_dict()))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"run": p.name, "task": p.run.task, "method": p.method, **a}))
    else:
        print(format_text(p, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
