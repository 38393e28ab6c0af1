"""What each option's value means for a run that continues (``--resume``, a protocol run again) or is rerun
(``--config``): its policy, set where the option is defined.

- ``RESULT`` (the default): changes what is computed; a resumed run or a continued protocol must keep it.
- ``RESUMABLE`` (``resumable(...)``): changes what is computed, but a resumed run may change it (``--n_epoch``:
  train on); a continued protocol must keep it.
- ``FREE`` (``free(...)``): where and how fast it runs (devices, workers, paths of weight files); may change on
  ``--resume``, and is still taken from a saved configuration by ``--config``.
- ``ONCE`` (``once(...)``): an action of this invocation (``--config``, ``--resume``); never taken from a saved
  configuration.
"""
from __future__ import annotations

import argparse

RESULT, RESUMABLE, FREE, ONCE = "result", "resumable", "free", "once"


def _with(action: argparse.Action, value: str) -> argparse.Action:
    action.policy = value
    return action


def free(action: argparse.Action) -> argparse.Action:
    return _with(action, FREE)


def resumable(action: argparse.Action) -> argparse.Action:
    return _with(action, RESUMABLE)


def once(action: argparse.Action) -> argparse.Action:
    return _with(action, ONCE)


def policy(action: argparse.Action) -> str:
    return getattr(action, "policy", RESULT)
