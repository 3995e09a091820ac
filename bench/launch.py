"""`python -m bench.launch serve|matcher`: the `astroq` command with more file descriptors.

A gateway holding tens of thousands of sockets needs a high RLIMIT_NOFILE;
this raises it as far as the process may (the hard limit, or beyond it with
CAP_SYS_RESOURCE) and then runs exactly what `astroq serve` / `astroq matcher` run.
"""

from __future__ import annotations

import sys

from bench.limits import raise_nofile


def main() -> int:
    raise_nofile()
    from server.cli import main as astroq

    return astroq(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
