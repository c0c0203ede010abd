"""Competition data: CSV reading and validation (`splits`), data sources and fingerprints (`source`), the bundled
synthetic sample (`synthetic`, `sample/`), the MBR candidate files (`candidates`) and the one dev split behind
every choice and every held-out figure (`holdout`). May import storage (a data folder may be a storage URL) and the
foundations; never torch.
"""

from dialsum.data.candidates import candidates_path, read_candidates, write_candidates
from dialsum.data.splits import (
    KNOWN_PLACEHOLDERS,
    PLACEHOLDER_RE,
    SPLITS,
    Example,
    first_few,
    load_splits,
    normalize,
    placeholders_in,
    read_references,
    read_split,
    read_submission,
    sample_dir,
    write_submission,
)

__all__ = [
    "candidates_path",
    "read_candidates",
    "write_candidates",
    "KNOWN_PLACEHOLDERS",
    "PLACEHOLDER_RE",
    "SPLITS",
    "Example",
    "load_splits",
    "normalize",
    "placeholders_in",
    "first_few",
    "read_references",
    "read_split",
    "read_submission",
    "sample_dir",
    "write_submission",
]
