"""The one decision engine: contact rules, choice, reasons and answers, vectorised over customers.

``/decide`` (a batch of one), ``/decide/batch``, ``nexttouch plan``, evaluation and the simulator
all decide through these modules; nothing else writes a rule, a choice or a reason text.
"""

from nexttouch.columns import Features, from_frame, from_row, from_rows
from nexttouch.engine.answer import FallbackCause
from nexttouch.engine.engine import DecisionEngine, Draft, TakeCapacity, unlimited

__all__ = [
    "DecisionEngine",
    "Draft",
    "FallbackCause",
    "Features",
    "TakeCapacity",
    "from_frame",
    "from_row",
    "from_rows",
    "unlimited",
]
