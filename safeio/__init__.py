"""What every layer shares about outside input and output files, with no project imports, so the
lowest layers (weights/, solvers/) and the parser (cli/) can all use it:

- `parse_json` / `read_json`: JSON from a file, with its nesting depth and integer sizes bounded,
  refused as one line that names the file and says what to do (never a RecursionError);
- the checks of values that both a flag and a file may give (`integer`, `number`, `seed`), one
  function each, so a value read from a file is validated exactly like the same value on the
  command line; `unknown`, the refusal of a name that is not in a table (with "did you mean");
- `write_atomically`: every file the project writes, created exclusively under a random name in its
  folder, then renamed or linked into place; `remove_stale` clears what a killed run left.
"""

from safeio.files import TEMPORARY_SUFFIX, reason, remove_stale, temporary_name, write_atomically
from safeio.jsontext import MAX_DEPTH, JSONProblem, decode, parse_json, read_json
from safeio.values import SEED_LIMIT, did_you_mean, integer, number, seed, short, unknown

__all__ = [
    "MAX_DEPTH",
    "SEED_LIMIT",
    "TEMPORARY_SUFFIX",
    "JSONProblem",
    "decode",
    "did_you_mean",
    "integer",
    "number",
    "parse_json",
    "read_json",
    "reason",
    "remove_stale",
    "seed",
    "short",
    "temporary_name",
    "unknown",
    "write_atomically",
]
