"""What every layer shares about outside input and output files, with no project imports, so the
lowest layers (weights/, solvers/) and the parser (cli/) can all use it:

- `parse_json` / `read_json`: JSON from a file, with its nesting depth and integer sizes bounded,
  refused as one line that names the file and says what to do (never a RecursionError);
- the checks of values that both a flag and a file may give (`integer`, `number`, `seed`), one
  function each, so a value read from a file is validated exactly like the same value on the
  command line; `unknown`, the refusal of a name that is not in a table (with "did you mean");
- `open_regular` / `read_bytes` / `read_text` / `check_regular`: every file read is a regular file
  (a FIFO, device or folder is refused before it is opened for reading);
- `text`: text that is valid Unicode (bytes that are not UTF-8 arrive as lone surrogates), checked
  where a prompt enters, and in every string `decode` returns;
- `InputError` (and `NoRoom`): a refusal that names inputs as `{name}` fields, read as the library's
  names by str() and as flags by the commands (`cli.one_line`);
- `check_target` and `write_atomically`: every file the project writes, refused up front when it
  exists (without --force) and created exclusively under a random name in its folder, then renamed
  or linked into place; `remove_stale` clears what a killed run left.
"""

from safeio.files import (
    TEMPORARY_SUFFIX,
    check_regular,
    check_target,
    check_writable,
    open_regular,
    read_bytes,
    read_text,
    reason,
    remove_stale,
    temporary_name,
    write_atomically,
)
from safeio.jsontext import MAX_DEPTH, JSONProblem, decode, parse_json, read_json
from safeio.refusals import InputError, NoRoom, Worded
from safeio.values import (
    SEED_LIMIT,
    did_you_mean,
    integer,
    number,
    seed,
    short,
    text,
    unicode_problem,
    unknown,
)

__all__ = [
    "MAX_DEPTH",
    "SEED_LIMIT",
    "TEMPORARY_SUFFIX",
    "InputError",
    "JSONProblem",
    "NoRoom",
    "Worded",
    "check_regular",
    "check_target",
    "check_writable",
    "decode",
    "did_you_mean",
    "integer",
    "number",
    "open_regular",
    "parse_json",
    "read_bytes",
    "read_json",
    "read_text",
    "reason",
    "remove_stale",
    "seed",
    "short",
    "temporary_name",
    "text",
    "unicode_problem",
    "unknown",
    "write_atomically",
]
