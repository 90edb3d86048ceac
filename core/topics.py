"""The bundled corpus's topics: what a tweet is about, from what it mentions.

Kept apart from ``datasets`` (pandas) so settings can validate topic names cheaply.
"""

from __future__ import annotations

import re

TOPIC_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("airline", re.compile(r"@(united|usairways|americanair|southwestair|jetblue|virginamerica)\b")),
    ("apple", re.compile(r"\b(apple|aapl|iphone\w*|ipad|ios\d*|itunes|macbook|tim cook)\b")),
    (
        "self_driving",
        re.compile(r"(driver[- ]?less|self[- ]?driving|autonomous|automated (car|vehicle)|robot ?cars?|google ?cars?)"),
    ),
    ("coachella", re.compile(r"coachella")),
    ("deflategate", re.compile(r"(deflate|patriots|brady|belichick|footballs?\b|super ?bowl|\bnfl\b)")),
    ("weather", re.compile(r"(allerg|sneez|pollen|claritin|zyrtec|allegra|weather|rain|snow|hay ?fever|sinus)")),
]

#: The topics the demo's (and the recovery benchmark's) shift brings in; phase 1 and v1 are airline only.
SHIFT_TOPICS: tuple[str, ...] = ("apple", "self_driving", "coachella", "deflategate", "weather")

#: Every topic name a tweet can have (``other`` when nothing matches).
TOPICS: tuple[str, ...] = (*(name for name, _ in TOPIC_PATTERNS), "other")


def topic_of(text: str) -> str:
    """The topic a tweet is about, from what it mentions (first match wins); else 'other'."""
    lowered = text.lower()
    for name, pattern in TOPIC_PATTERNS:
        if pattern.search(lowered):
            return name
    return "other"
