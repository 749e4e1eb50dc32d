"""Write tuned baseline parameters into the evaluation YAML, keeping its other content and comments.

PyYAML drops comments, so the file is edited as text, one policy block at a time:

- each tuned policy's block under ``policies:`` is rewritten with every parameter spelled out (its
  old values, merged ones included, updated with the chosen ones); the inline comments of keys
  whose value did not change are kept, and a ``# tuned ...`` line above it points to its record;
- a block the tuned one shared through a YAML anchor (``min_variance: &estimated`` /
  ``<<: *estimated``) gets the inherited keys written out first (with their comments), so that
  tuning one policy never changes another one's parameters;
- the top-level ``tuning:`` section (rewritten as a whole) keeps one record per tuned policy
  (:meth:`defialloc.evaluation.tuning.TuningResult.record`: date, objective, config, scenario count, grid,
  choice, scores); records of policies not tuned this time are kept.

Every other line is left as it was. The result is checked before it is written: parsed again, its
``policies`` must equal the old ones updated with the choices, and every other section must be
unchanged; otherwise nothing is written.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

_TOP_KEY = re.compile(r"^[A-Za-z_][\w-]*\s*:")
_BLOCK = re.compile(r"^  ([A-Za-z_]\w*):(.*)$")
_KEY = re.compile(r"^    ([A-Za-z_]\w*):\s*(.*?)\s*(#.*)?$")
_MERGE = re.compile(r"^\s+<<:\s*\*(\w+)\s*(#.*)?$")
TUNED_MARK = "  # tuned by `defialloc tune-baselines`"


class _PlainDumper(yaml.SafeDumper):
    """A safe dumper that repeats shared values instead of writing anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _scalar(value: Any) -> str:
    """A YAML flow rendering of ``value`` (``null``, ``true``, ``0.05``, ``[1, 2]``, ``'x'``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _section(lines: list[str], key: str) -> tuple[int, int] | None:
    """``(first, end)`` line range of top-level ``key:`` (its header included), or None."""
    start = next((i for i, line in enumerate(lines) if re.match(rf"^{key}\s*:", line)), None)
    if start is None:
        return None
    end = next((j for j in range(start + 1, len(lines)) if _TOP_KEY.match(lines[j])), len(lines))
    # comment and blank lines right before the next top-level key belong to it
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1
    return start, end


def _blocks(lines: list[str], start: int, end: int) -> dict[str, tuple[int, int]]:
    """``{policy: (header line, end)}`` of the policy blocks in ``lines[start:end]``."""
    heads = [(i, m.group(1)) for i in range(start, end) if (m := _BLOCK.match(lines[i]))]
    out = {}
    for k, (i, name) in enumerate(heads):
        stop = heads[k + 1][0] if k + 1 < len(heads) else end
        # comment lines right before the next header belong to the next block
        while stop - 1 > i and lines[stop - 1].lstrip().startswith("#"):
            stop -= 1
        out[name] = (i, stop)
    return out


def _key_comments(lines: list[str]) -> dict[str, str]:
    return {m.group(1): m.group(3) or "" for line in lines if (m := _KEY.match(line))}


def _key_line(key: str, value: Any, comment: str = "") -> str:
    text = f"    {key}: {_scalar(value)}"
    return f"{text:<{max(28, len(text) + 2)}}{comment}" if comment else text


def update_evaluation_yaml(
    text: str, chosen: dict[str, dict[str, Any]], records: dict[str, dict[str, Any]]
) -> str:
    """``text`` with the ``chosen`` parameters of each policy and its tuning ``records`` (see the
    module docstring). Raises ValueError when the file has no ``policies:`` section or the edit
    would change anything else."""
    data = yaml.safe_load(text) or {}
    old = copy.deepcopy(data.get("policies") or {})
    expected = copy.deepcopy(old)
    for name, params in chosen.items():
        expected[name] = {**(old.get(name) or {}), **params}
    lines = text.splitlines()
    span = _section(lines, "policies")
    if span is None:
        raise ValueError("the evaluation YAML has no top-level 'policies:' section")
    blocks = _blocks(lines, span[0] + 1, span[1])
    anchors = {
        m.group(1): name
        for name, (i, _) in blocks.items()
        if (m := re.search(r"&(\w+)", lines[i].split("#")[0]))
    }
    new_blocks: dict[str, list[str]] = {}
    # 1. untuned blocks that merge a tuned block's anchor: write the inherited keys out
    for name, (i, stop) in blocks.items():
        if name in chosen:
            continue
        body = lines[i:stop]
        merges = [(j, m.group(1)) for j, line in enumerate(body) if (m := _MERGE.match(line))]
        if not any(anchors.get(a) in chosen for _, a in merges):
            continue
        own = _key_comments(body)
        out = []
        for line in body:
            m = _MERGE.match(line)
            if m is None or anchors.get(m.group(1)) not in chosen:
                out.append(line)
                continue
            owner = blocks[anchors[m.group(1)]]
            comments = _key_comments(lines[owner[0] : owner[1]])
            for key, value in (old.get(name) or {}).items():
                if key not in own:
                    out.append(_key_line(key, value, comments.get(key, "")))
        new_blocks[name] = out
    # 2. the tuned blocks, every parameter spelled out, no anchor, no merge
    for name in chosen:
        comments: dict[str, str] = {}
        if name in blocks:
            i, stop = blocks[name]
            comments = _key_comments(lines[i:stop])
        before = old.get(name) or {}
        body = [f"  {name}:"]
        for key, value in expected[name].items():
            keep = key in before and before[key] == value
            body.append(_key_line(key, value, comments.get(key, "") if keep else ""))
        new_blocks[name] = body
    # 3. splice (bottom-up so earlier line numbers stay valid); new policies go at the end
    out = list(lines)
    marks = {name: f"{TUNED_MARK} on {records[name]['date']}: see tuning.{name}" for name in chosen}
    for name, (i, stop) in sorted(blocks.items(), key=lambda kv: -kv[1][0]):
        if name not in new_blocks:
            continue
        first = i
        while first - 1 > span[0] and out[first - 1].startswith(TUNED_MARK):
            first -= 1  # a previous tuning's mark
        lead = [marks[name]] if name in marks else []
        out[first:stop] = lead + new_blocks[name]
    extra = [
        line for name in chosen if name not in blocks for line in [marks[name], *new_blocks[name]]
    ]
    if extra:
        end = _section(out, "policies")[1]  # type: ignore[index]
        out[end:end] = extra
    # 4. the tuning section: old records kept, this run's replace theirs
    tuning = dict(data.get("tuning") or {})
    tuning.update(copy.deepcopy(records))
    rendered = yaml.dump(
        {"tuning": tuning},
        Dumper=_PlainDumper,
        sort_keys=False,
        default_flow_style=None,
        width=100,
    ).splitlines()
    header = [
        "# Parameters chosen by `defialloc tune-baselines` on validation scenarios only (never test",
        "# scenarios or held-out periods): per policy, the date, objective, config, scenario count,",
        "# grid (Cartesian product, last key fastest), the choice and every grid point's score.",
    ]
    span_t = _section(out, "tuning")
    if span_t is None:
        out += ["", *header, *rendered]
    else:
        out[span_t[0] : span_t[1]] = rendered
    new_text = "\n".join(out) + "\n"
    _check(new_text, data, expected)
    return new_text


def _check(new_text: str, data: dict[str, Any], expected: dict[str, Any]) -> None:
    new = yaml.safe_load(new_text) or {}
    if (new.get("policies") or {}) != expected:
        raise ValueError("internal error: the edited YAML's policies differ from the intended ones")
    for key in set(data) | set(new):
        if key not in ("policies", "tuning") and data.get(key) != new.get(key):
            raise ValueError(f"internal error: the edit would change the {key!r} section")


def write_tuned_params(
    path: str | Path, chosen: dict[str, dict[str, Any]], records: dict[str, dict[str, Any]]
) -> None:
    """Apply :func:`update_evaluation_yaml` to the file at ``path`` (written only if the check passes)."""
    file = Path(path)
    file.write_text(update_evaluation_yaml(file.read_text(), chosen, records))
