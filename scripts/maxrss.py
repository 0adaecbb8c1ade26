"""Run a command and record its peak RSS, free of the fork artefact.

    python maxrss.py OUT.json -- COMMAND [ARGS...]

Runs COMMAND (stdin, stdout and stderr inherited), waits for it with
wait4(2), writes {"maxrss_kb": ..., "exit_code": ...} to OUT.json and exits
with COMMAND's status.

Why a separate launcher: on Linux a child's ru_maxrss starts from the RSS of
the process it was forked from (exec records the old address space's
high-water mark, and Python's subprocess uses vfork, sharing the parent's).
A parent that holds a 300 MB model would make every child look at least
300 MB. This launcher imports nothing heavy (~10 MB), so the numbers it
reports are the command's own, as /usr/bin/time -v reports them.
"""

import json
import os
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    out, cmd = sys.argv[1], sys.argv[3:]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({"maxrss_kb": usage.ru_maxrss, "exit_code": code}, f)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
