"""``verify_run(run_dir)``: is a record whole? (``pwfn-viz verify RUN_DIR``)

Checks run.json (JSON, format version, every key through :mod:`pwfn_viz.record.schema`, rounds
numbered in order), that every file it lists is present, each file's sha256 against the one
recorded, that every tensor file parses and holds each converted tensor at its recorded shape with
finite mu and sigma, and that the tables parse and hold rows for every committed round. Returns a
:class:`Verdict`: ``ok``, the ``problems`` found (each naming its file) and ``notes`` (things that
are not damage, such as a record written before checksums were kept).

    >>> verdict = verify_run("runs/digits")      # doctest: +SKIP
    >>> print(verdict)                            # doctest: +SKIP
    runs/digits: good (format 2, 10 rounds, complete; 13 files, checksums match)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..files import FileError, read_bytes, reading, sha256_bytes
from .rundir import round_file
from .storage import check_snapshot, load_safetensors, read_csv
from .schema import read_meta


@dataclass
class Verdict:
    """What :func:`verify_run` found: ``problems`` (damage, each naming its file) and ``notes``."""
    path: Path
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self):
        if self.ok:
            head = f"{self.path}: good ({self.summary})"
        else:
            head = f"{self.path}: {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}" + \
                   (f" ({self.summary})" if self.summary else "")
        return "\n".join([head, *(f"  problem: {p}" for p in self.problems), *(f"  note: {n}" for n in self.notes)])


def _tensor_file(path: Path, sha: str | None, shapes: dict, pre: bool, problems: list) -> None:
    try:
        data = read_bytes(path, "tensor file")
    except FileError as err:
        problems.append(str(err))
        return
    if sha is not None and sha256_bytes(data) != sha:
        problems.append(f"{path}: checksum mismatch (sha256 {sha[:12]}... recorded, {sha256_bytes(data)[:12]}... "
                        "found): the file changed since it was recorded")
    try:
        with reading(path, "safetensors file"):
            tensors = load_safetensors(data)
        check_snapshot(tensors, shapes, path, pre)
    except FileError as err:
        problems.append(str(err))


def verify_run(run_dir) -> Verdict:
    """Check the record in ``run_dir`` (see the module docstring)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: nothing to verify (a run directory holds run.json)")
    verdict = Verdict(path)
    problems, notes = verdict.problems, verdict.notes
    try:
        meta = read_meta(path)
    except (FileError, FileNotFoundError) as err:
        problems.append(str(err))
        return verdict
    rounds = meta["rounds"]
    n_fractions = len(meta["config"]["fractions"])
    complete = meta.get("status") == "complete"
    if complete and len(rounds) != n_fractions:
        problems.append(f"{path / 'run.json'}: status is complete but {len(rounds)} of {n_fractions} rounds are listed")
    if len(rounds) > n_fractions:
        problems.append(f"{path / 'run.json'}: {len(rounds)} rounds listed, the schedule has {n_fractions}")
    sums = meta.get("checksums")
    if sums is None:
        notes.append(f"no checksums recorded (record format {meta['format_version']}): files are checked for being "
                     "present, readable and finite only")
        sums = {}
    shapes = meta["tensors"]
    # the state before the rounds (no pre-snap tensors), then each round's
    before_rounds = {"start.safetensors": "the start", "warmup.safetensors": "the warm-up"}
    files = ["start.safetensors", *(["warmup.safetensors"] if "warmup" in meta else []),
             *(round_file(m["round"]) for m in rounds)]
    tables = ["steps.csv", "layers.csv"] if rounds or any(t in sums for t in ("steps.csv", "layers.csv")) else []
    # a round written when the run stopped, not committed: its tensor file comes first, then its rows
    interrupted = (path / round_file(len(rounds))).exists()
    for name in files:
        if not (path / name).is_file():
            problems.append(f"{path / name}: missing (run.json lists {before_rounds.get(name, 'this round')})")
            continue
        if sums and name not in sums:
            notes.append(f"{name}: no checksum recorded")
        _tensor_file(path / name, sums.get(name), shapes, name not in before_rounds, problems)
    committed = {m["round"] for m in rounds}
    for name in tables:
        if not (path / name).is_file():
            problems.append(f"{path / name}: missing (the record has {len(rounds)} rounds)")
            continue
        if sums and name not in sums:
            notes.append(f"{name}: no checksum recorded")
        try:
            table = read_csv(path / name, None if interrupted else sums.get(name))
        except FileError as err:
            problems.append(str(err))
            continue
        have = set(table["round"]) if len(table) else set()
        if name == "layers.csv" and committed - have:
            problems.append(f"{path / name}: no rows for rounds {sorted(committed - have)[:5]} that run.json lists")
        if have - committed:
            notes.append(f"{name} holds rows of rounds {sorted(have - committed)[:5]} that run.json does not list "
                         "(an interrupted round: `pwfn-viz run --resume` drops them)")
    extra = sorted(p.name for p in path.glob("round_*.safetensors")
                   if re.fullmatch(r"round_\d+\.safetensors", p.name) and p.name not in files)
    if extra:
        notes.append(f"{', '.join(extra[:3])}: not committed in run.json (an interrupted round: "
                     "`pwfn-viz run --resume` redoes it)")
    checked = len(files) + len(tables)
    verdict.summary = (f"format {meta['format_version']}, {len(rounds)} round{'s' if len(rounds) != 1 else ''}, "
                       f"{'complete' if complete else 'incomplete'}; {checked} files"
                       + (", checksums match" if sums and verdict.ok else ""))
    return verdict
