"""The run directory: atomic writes, and ``Run`` / ``Round`` for reading a recorded run back."""
from .rundir import (FORMAT_VERSION, Round, Run, atomic_append_csv, atomic_save_tensors, atomic_write_bytes,
                     atomic_write_text, load_run, load_tensors, read_csv, round_file, snapshot_tensors,
                     state_dict_from_snapshot)
from .schema import read_meta
from .verify import verify_run
