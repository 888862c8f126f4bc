"""Wording shared by error messages across the package (it imports no other fastdeit module)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(given: str, known: Iterable[str], n: int = 3) -> str:
    """'; did you mean a, b?' for the known names most like `given`, or '' when none is close.

    Each name is compared whole and by its start as long as `given`: a typo in a prefix ('deit_tinny') is then
    nearest the names that start with what was meant (deit_tiny_*), not a short name of other letters
    (convnet_tiny) that difflib's whole-name ratio ranks first.
    """

    def score(name: str) -> float:
        whole = difflib.SequenceMatcher(None, given, name).ratio()
        return max(whole, difflib.SequenceMatcher(None, given, name[: len(given)]).ratio())

    ranked = sorted(known, key=lambda name: -score(name))  # stable: equal scores keep the known order
    close = [name for name in ranked[:n] if score(name) >= 0.6]
    return f"; did you mean {', '.join(close)}?" if close else ""
