"""The frame switcher behind ``--slate``: live source frames when there are some, the slate when there are none.

(Being written; the constants below are the slate's look, which tests and benches detect at the receivers.)
"""

from __future__ import annotations

SLATE_BACKGROUND = (16, 32, 64)  # RGB of the generated card's background: a dark blue no test source uses
SAMPLE_RATE = 48000
CHANNELS = 2
