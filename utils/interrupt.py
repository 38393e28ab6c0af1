"""Imported first by the entry points (train.py, test.py, predict.py, protocol.py, tools/): Ctrl-C during the seconds
their libraries take to import ends with one line and exit code 130, as it does later under
:func:`utils.errors.run_cli` (which puts Python's own handler back when it starts). Only for a program of this
checkout run as a script; importing it from elsewhere (tests, the API) changes nothing."""
import os
import signal
import sys

import __main__

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _interrupted(signum, frame) -> None:
    sys.stderr.write("error: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


_script = os.path.abspath(getattr(__main__, "__file__", None) or "")
if _script.startswith(_HERE + os.sep) and os.path.dirname(_script) in (_HERE, os.path.join(_HERE, "tools")):
    signal.signal(signal.SIGINT, _interrupted)
