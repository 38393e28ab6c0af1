"""What each option's value means for a run that continues (``--resume``, a protocol run again) or is rerun
(``--config``): its policy, given where the option is written (``option(..., policy=...)``, options/base_options.py).

- ``RESULT`` (the default): changes what is computed; a resumed run or a continued protocol must keep it.
- ``RESUMABLE``: changes what is computed, but a resumed run may change it (``--n_epoch``: train on); a continued
  protocol must keep it.
- ``FREE``: where and how fast it runs (devices, workers, paths of weight files); may change on ``--resume``, and is
  still taken from a saved configuration by ``--config``.
- ``ONCE``: an action of this invocation (``--config``, ``--resume``); never taken from a saved configuration.
"""
from __future__ import annotations

import argparse

RESULT, RESUMABLE, FREE, ONCE = "result", "resumable", "free", "once"


def policy(action: argparse.Action) -> str:
    """The policy of a generated parser's option (``parser_of`` sets it on each action)."""
    return getattr(action, "policy", RESULT)
