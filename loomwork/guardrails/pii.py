"""Personal data in text: emails, phone numbers, payment card numbers (Luhn-checked) and
named custom patterns, redacted as `[REDACTED:<kind>]` or reported as a trip."""

from __future__ import annotations

import re
from collections.abc import Callable

from loomwork.guardrails.processors import ProcessorContext, Tripwire
from loomwork.guardrails.settings import PII_KINDS, PiiRedaction

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digit groups with single separators: 13..19 digits (checked by Luhn) for cards, 7..15
# for phones (an optional leading + and parenthesized area code).
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Never a piece of a longer run of digit groups (a card number that fails Luhn stays whole).
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+|\(\d{1,4}\) ?)?\d(?:[ .-]?\(?\d\)?){6,14}(?!\w)(?![ .-]?\d)"
)


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def luhn_valid(digits: str) -> bool:
    """Whether the digits pass the Luhn checksum (as every payment card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _phone(match: str) -> bool:
    return 7 <= len(_digits(match)) <= 15 and not ISO_DATE.fullmatch(match)


class PiiProcessor:
    """The `pii_redaction` processor of one configuration."""

    name = "pii_redaction"
    uses_model = False

    def __init__(self, config: PiiRedaction) -> None:
        kinds = set(config.kinds or PII_KINDS)
        # Cards before phones (a card number is also a run of digits), emails first.
        self._rules: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = []
        if "email" in kinds:
            self._rules.append(("email", EMAIL, lambda _: True))
        if "card" in kinds:
            self._rules.append(("card", CARD, lambda m: luhn_valid(_digits(m))))
        if "phone" in kinds:
            self._rules.append(("phone", PHONE, _phone))
        for pattern in config.patterns:
            self._rules.append((pattern.name, re.compile(pattern.regex), lambda _: True))
        self._block = config.action == "block"
        # A cheap first look: no digit and no @ means no built-in kind can match.
        self._custom = bool(config.patterns)

    def redact(self, text: str) -> tuple[str, list[str]]:
        """The text with every match replaced, and the kinds found (in order)."""
        found: list[str] = []
        if not self._custom and "@" not in text and not any(c.isdigit() for c in text):
            return text, found
        for label, pattern, accept in self._rules:

            def replace(
                match: re.Match[str], label: str = label, accept: Callable[[str], bool] = accept
            ) -> str:
                if not accept(match.group(0)):
                    return match.group(0)
                found.append(label)
                return f"[REDACTED:{label}]"

            text = pattern.sub(replace, text)
        return text, found

    async def process(self, text: str, ctx: ProcessorContext) -> str:
        redacted, found = self.redact(text)
        if found and self._block:
            kinds = ", ".join(dict.fromkeys(found))
            raise Tripwire(f"personal data in the {ctx.stage}: {kinds}")
        return redacted
