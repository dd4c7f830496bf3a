"""``rhlens merge``: join the shards of one run into the files a single process writes for it.

Every kind of run that writes a sample log merges the same way (a detection's score file, a NIAH
run's or a patching run's CSV): the shards' logs are checked against each other, the records put
back in the run's order, and the log and the output written as one process would have
(:func:`rhlens.run.outputs.write_output`); a score file also gets the map card a single process
writes (:func:`rhlens.run.card.merged_card`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import NoPassingSampleError, UsageError
from ..validate import output_file, same_file
from .card import merged_card, write_card
from .names import CARD_SUFFIX
from .names import LOG_SUFFIX as _LOG
from .outputs import write_output
from .samplelog import read_log, write_log
from .shard import keys_digest


def _log_path(path: str | Path) -> tuple[str, str]:
    """``(output, its sample log)`` of a shard file given as either."""
    text = str(path)
    if text.endswith(_LOG):
        return text[: -len(_LOG)], text
    return text, text + _LOG


def _check_part(path: str | Path, part: dict) -> None:
    """The shard fields of a log's header hold what they should (an edited or damaged header
    is one line naming the file, not a TypeError of the merge)."""
    ints = {f: part.get(f) for f in ("index", "count", "n_samples")}
    bad = [f for f, v in ints.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad or not 0 <= part["index"] < part["count"] or not all(
            isinstance(k, str) for k in part["keys"]):
        what = f"its {bad[0]} is {ints[bad[0]]!r}" if bad else "its shard or keys do not fit"
        raise UsageError(f"{path}: the shard named in its sample log's header is damaged "
                         f"({what}); rerun this shard's command.")


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, force: bool = False) -> dict:
    """Join the shards of one run into the files a single process writes for it.

    Args:
        paths: each shard's output (``scores.shard0of2.json``...) or its sample log; every
            shard of the split once, each finished.
        out: the merged score file (or CSV); its sample log ``<out>.samples.jsonl`` is
            written too, so a later unsharded run with the same settings resumes from it, and
            a score file's map card ``<out>.card.json``.
        force: replace ``out`` (and its log) when they exist.

    Returns:
        ``{"kind", "n_samples", "n_shards", "out", "log"}``, and ``"n_passed"`` for a score run,
        ``"n_skipped"`` (pairs the model did not answer) for a patching run.

    Raises:
        UsageError: shards of different runs (settings, model identity) or grids, a shard
            given twice or missing, an unfinished shard, a file that is no shard, or an
            existing ``out`` without ``force``. Nothing is written then.
        NoPassingSampleError: a score run of which no sample passed the gate.
    """
    if not paths:
        raise UsageError("name the shards' files to merge (e.g. scores.shard*.json).")
    shards = []
    for path in paths:
        output, log = _log_path(path)
        if not Path(log).is_file():
            raise UsageError(f"{path}: its sample log {log} does not exist; pass the files a "
                             "run with --shard i/n wrote (e.g. scores.shard0of2.json).")
        header, records = read_log(log)
        part = header.get("shard")
        if not isinstance(part, dict) or not isinstance(part.get("keys"), list):
            raise UsageError(f"{path} is not a shard's output (its sample log names no "
                             "shard); merge the files of a run with --shard i/n.")
        _check_part(path, part)
        shards.append((str(path), output, log, header["settings"], part, records))
    first_path, _, _, settings, first, _ = shards[0]
    seen: dict[int, str] = {}
    for path, _, _, theirs, part, _ in shards:
        where = f"{path} (shard {part.get('index')}/{part.get('count')})"
        if part.get("kind") != first.get("kind"):
            raise UsageError(f"{where} is a {part.get('kind')} run but {first_path} a "
                             f"{first.get('kind')} run: shards of different runs.")
        if theirs != settings:
            diffs = "; ".join(f"{k} {settings.get(k)!r} in {first_path}, {theirs.get(k)!r} here"
                              for k in sorted(set(settings) | set(theirs))
                              if settings.get(k) != theirs.get(k))
            raise UsageError(f"{where} comes from another run than {first_path} ({diffs}).")
        if (part.get("count"), part.get("grid"), part.get("n_samples")) != (
                first.get("count"), first.get("grid"), first.get("n_samples")):
            raise UsageError(f"{where} splits another grid, or the same one into other shards, "
                             f"than {first_path} (shard {first.get('index')}/"
                             f"{first.get('count')}): shards of different runs.")
        if part["index"] in seen:
            raise UsageError(f"{where} is given twice (also as {seen[part['index']]}); pass "
                             "each shard once.")
        seen[part["index"]] = path
    count, n_samples = first["count"], first["n_samples"]
    missing = [i for i in range(count) if i not in seen]
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise UsageError(f"shard {names} of {count} missing: pass every shard's file (each "
                         f"ran with --shard i/{count}).")
    order: list[str] = [""] * n_samples
    by_key: dict[str, dict] = {}
    for path, _, _, _, part, records in shards:
        keys, index = part["keys"], part["index"]
        if len(keys) != len(range(index, n_samples, count)):
            raise UsageError(f"{path}: its log lists {len(keys)} samples, not those of shard "
                             f"{index}/{count} of a {n_samples}-sample grid; was it edited?")
        unfinished = [k for k in keys if k not in records]
        if unfinished:
            raise UsageError(f"{path} (shard {index}/{count}) has finished "
                             f"{len(keys) - len(unfinished)} of its {len(keys)} samples: rerun "
                             "its command to finish it, then merge.")
        order[index::count] = keys
        by_key.update((k, records[k]) for k in keys)
    if keys_digest(order) != first["grid"]:
        raise UsageError("the shards' samples do not make up the grid they name; were their "
                         "logs edited? Rerun the shards.")
    out_log = f"{out}{_LOG}"
    for path, output, log, *_ in shards:
        if same_file(out, output) or same_file(out, log) or same_file(out_log, log):
            raise UsageError(f"out {out} would overwrite the shard {path}; pass another --out.",
                             arg="out")
    output_file(out, "out", sidecars=(_LOG, CARD_SUFFIX) if first["kind"] == "score" else (_LOG,))
    if not force:
        there = [p for p in (out, out_log) if Path(p).exists()]
        if there:
            raise UsageError(f"out {there[0]} exists; pass --force to replace it, or another "
                             "--out.", arg="out")
    merged = [by_key[k] for k in order]
    summary = {"kind": first["kind"], "n_samples": n_samples, "n_shards": count,
               "out": str(out), "log": out_log}
    if first["kind"] == "score":
        summary["n_passed"] = sum(bool(r["passed"]) for r in merged)
        if not summary["n_passed"]:
            raise NoPassingSampleError(
                f"None of the {n_samples} samples of the shards passed the ROUGE-1 recall gate "
                f"(> {settings.get('rouge_gate')}), so no head can be scored; see "
                "`rhlens score --help` for what to change.")
    elif first["kind"] == "patch":
        summary["n_skipped"] = sum(bool(r["skipped"]) for r in merged)
    try:  # the output first: it is what reads the records' contents, and writes nothing on error
        write_output(first["kind"], out, merged)
    except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as err:
        raise UsageError(f"the shards' records cannot be merged ({type(err).__name__}: "
                         f"{str(err)[:120]}): a damaged log; rerun the shards. Nothing was "
                         "written.") from None
    write_log(out_log, settings, merged)
    if first["kind"] == "score":
        by_index = sorted(shards, key=lambda s: s[4]["index"])
        write_card(out, merged_card([s[1] for s in by_index], settings, merged), merged)
    return summary
