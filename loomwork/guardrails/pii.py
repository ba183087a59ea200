"""Personal data in text: emails, phone numbers, payment card numbers (Luhn-checked) and
named custom patterns, redacted as `[REDACTED:<kind>]` or reported as a trip."""

from __future__ import annotations

import re
from collections.abc import Callable

from loomwork.guardrails.processors import ProcessorContext, Tripwire
from loomwork.guardrails.settings import PII_KINDS, PiiRedaction

EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# Digit groups with single separators: 13..19 digits (checked by Luhn) for cards, 7..15
# for phones (an optional leading + and parenthesized area code).
CARD = re.compile(r"(?<![0-9-])[0-9](?:[ -]?[0-9]){12,18}(?![0-9-])")
# Never a piece of a longer run of digit groups (a card number that fails Luhn stays whole).
PHONE = re.compile(
    r"(?<![\w+])(?<![0-9][ .-])(?:\+|\([0-9]{1,4}\) ?)?[0-9](?:[ .-]?\(?[0-9]\)?){6,14}(?!\w)"
    r"(?![ .-]?[0-9])"
)


ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


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
    return "".join(ch for ch in text if "0" <= ch <= "9")


def _phone(match: str) -> bool:
    return 7 <= len(_digits(match)) <= 15 and not ISO_DATE.fullmatch(match)


# Runs of at least 7 digits with short separators: only these are looked at for card and
# phone numbers (scanning the whole text with those patterns costs ~10× more).
# It starts with a digit (a leading + or parenthesis is taken in after): a pattern that
# starts with a fixed character class is scanned for much faster.
DIGIT_RUN = re.compile(r"[0-9](?:[ ().-]{0,2}[0-9]){6,}\)?")

Rule = tuple[str, re.Pattern[str], Callable[[str], bool]]


class PiiProcessor:
    """The `pii_redaction` processor of one configuration."""

    name = "pii_redaction"
    uses_model = False

    def __init__(self, config: PiiRedaction) -> None:
        kinds = set(config.kinds or PII_KINDS)
        self._email = "email" in kinds
        # Cards before phones (a card number is also a run of digits).
        self._numbers: list[Rule] = []
        if "card" in kinds:
            self._numbers.append(("card", CARD, lambda m: luhn_valid(_digits(m))))
        if "phone" in kinds:
            self._numbers.append(("phone", PHONE, _phone))
        self._custom: list[Rule] = [
            (p.name, re.compile(p.regex), lambda _: True) for p in config.patterns
        ]
        self._block = config.action == "block"

    def redact(self, text: str) -> tuple[str, list[str]]:
        """The text with every match replaced, and the kinds found (in order)."""
        found: list[str] = []
        if self._email and "@" in text:
            text = _sub([("email", EMAIL, lambda _: True)], text, found)
        if self._numbers and any(d in text for d in "0123456789"):
            text = self._redact_numbers(text, found)
        if self._custom:
            text = _sub(self._custom, text, found)
        return text, found

    def _redact_numbers(self, text: str, found: list[str]) -> str:
        pieces: list[str] = []
        last = 0
        for run in DIGIT_RUN.finditer(text):
            start, end = run.span()
            if start and text[start - 1] in "+(":
                start -= 1
            if (start and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum()):
                continue  # part of a word or code ("A1234567"), not a number of its own
            number = text[start:end]
            redacted = _sub(self._numbers, number, found)
            if redacted != number:
                pieces += [text[last:start], redacted]
                last = end
        return "".join([*pieces, text[last:]]) if pieces else text

    async def process(self, text: str, ctx: ProcessorContext) -> str:
        redacted, found = self.redact(text)
        if found and self._block:
            kinds = ", ".join(dict.fromkeys(found))
            raise Tripwire(f"personal data in the {ctx.stage}: {kinds}")
        return redacted


def _sub(rules: list[Rule], text: str, found: list[str]) -> str:
    """Each rule's matches that it accepts replaced by `[REDACTED:<label>]`, in order."""
    for label, pattern, accept in rules:

        def replace(
            match: re.Match[str], label: str = label, accept: Callable[[str], bool] = accept
        ) -> str:
            if not accept(match.group(0)):
                return match.group(0)
            found.append(label)
            return f"[REDACTED:{label}]"

        text = pattern.sub(replace, text)
    return text
