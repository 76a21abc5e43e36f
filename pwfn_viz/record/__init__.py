"""The run directory: atomic writes, and ``Run`` / ``Round`` for reading a recorded run back."""
from .rundir import Round, Run, load_run, round_file
from .schema import FORMAT_VERSION, read_meta
from .storage import (atomic_append_csv, atomic_save_tensors, atomic_write_bytes, atomic_write_text, load_tensors,
                      read_csv, snapshot_tensors, state_dict_from_snapshot)
from .verify import verify_run

__all__ = ["Round", "Run", "load_run", "round_file", "FORMAT_VERSION", "read_meta", "atomic_append_csv",
           "atomic_save_tensors", "atomic_write_bytes", "atomic_write_text", "load_tensors", "read_csv",
           "snapshot_tensors", "state_dict_from_snapshot", "verify_run"]
