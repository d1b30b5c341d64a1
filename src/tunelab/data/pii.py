"""Personal data in texts: find it, mask it for reports, redact it before training.

A fine-tuned model can memorise and repeat what it was trained on, so e-mail addresses, phone
numbers, card numbers, IBANs, IP addresses and national ID numbers in the training data are a
leak waiting to happen. Detection favours precision: every kind with a checksum or a real format
is validated (Luhn for cards, mod-97 and the per-country length for IBANs via python-stdnum, the
numbering plan for phones via phonenumbers, `ipaddress` for IPs), because a doctor that flags every
order number, date and price gets ignored.

Speed: most texts hold none of this. `PREFILTER` is one cheap pattern that every kind needs to
match somewhere (an '@', a run of 7+ digits and separators, an IBAN head, or two colons for IPv6);
a text that misses it costs one regex search. The same pattern is valid RE2, so the doctor can run
it over a whole Arrow column at once.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as _iban
from stdnum.us import ssn as _ssn

EMAIL, PHONE, CARD, IBAN, IP, NATIONAL_ID = "EMAIL", "PHONE", "CARD", "IBAN", "IP", "NATIONAL_ID"
KINDS: tuple[str, ...] = (EMAIL, PHONE, CARD, IBAN, IP, NATIONAL_ID)
# Regions whose national format (no +country code) is recognised. International format (+44 ...) is
# recognised for every country. Kept short: each region is one more way for a number to look valid.
DEFAULT_REGIONS: tuple[str, ...] = ("US", "GB")

# Python re and RE2 alike (no look-arounds): a text that misses it cannot hold any kind below.
PREFILTER = r"@|\d[\d .()+-]{5,}\d|[A-Z]{2}\d{2}|:[0-9A-Fa-f]{0,4}:"
PREFILTER_RE = re.compile(PREFILTER)

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b")
# Candidates: 13-19 digits, spaces or dashes between, first digit 2-6 (no card issuer starts otherwise).
_CARD = re.compile(r"(?<![\d.,#-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d]|[.,]\d)", re.ASCII)
# Issuer prefixes and lengths (Visa, Amex, Mastercard, Discover, Diners, JCB, UnionPay, Maestro): with
# Luhn alone one in ten random 13-19 digit identifiers would pass.
_CARD_BRAND = re.compile(r"4(?:\d{12}|\d{15}|\d{18})|3[47]\d{13}|5[1-5]\d{14}|2(?:2[2-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}"
                         r"|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|3(?:0[0-5]|[689]\d)\d{11,16}|35\d{14,17}|62\d{14,17}"
                         r"|(?:5[06-8]|6\d)\d{11,17}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.ASCII)
_IPV4 = re.compile(r"(?<![\w.€$£])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d|\s?(?:EUR|USD|GBP|CHF|€|\$|£))")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:.]*\d)(?:[0-9A-Fa-f]{0,4}:){2,7}"
                   r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4}\b|(?<=:))(?![\w:]|\.\w)")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])", re.ASCII)
_UK_NI = re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_PHONE = re.compile(r"(?<![\w@/.+#-])(?:\+ ?)?\(?\d[\d().\- ]{5,22}\d(?!\w|[@/]|[.-]\d)")
_PHONE_GROUP = re.compile(r"[+(]*\d+\)?")
_DATE = re.compile(r"(?<!\d)(?:\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{2,4})(?!\d)")
_NON_DIGIT = re.compile(r"\D")
_DIGIT_RUN = re.compile(r"\d+")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:v|ver|version|release|build)\.?\s*$")


@dataclass(frozen=True, slots=True)
class Match:
    """One piece of personal data: its kind, its span in the text, and the raw value."""

    kind: str
    start: int
    end: int
    value: str


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (nine in ten random digit strings fail it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _CARD.finditer(text):
        digits = _NON_DIGIT.sub("", m.group())
        if _CARD_BRAND.fullmatch(digits) and len(set(digits)) > 1 and luhn_ok(digits):
            spans.append(m.span())
    return spans


@functools.lru_cache(maxsize=1 << 16)
def _valid_iban(compact: str) -> bool:
    """Mod-97 first (cheap, rejects 96 in 97 random candidates), then python-stdnum's per-country format."""
    if len(compact) < 15:
        return False
    moved = compact[4:] + compact[:4]
    if int("".join(str(int(ch, 36)) for ch in moved)) % 97 != 1:
        return False
    return bool(_iban.is_valid(compact))


def _ibans(text: str) -> list[tuple[int, int]]:
    """A greedy match may swallow a following capitalised word: drop trailing groups until valid."""
    spans = []
    for m in _IBAN.finditer(text):
        value = m.group()
        while True:
            if _valid_iban(value.replace(" ", "")):
                spans.append((m.start(), m.start() + len(value)))
                break
            if " " not in value:
                break
            value = value.rsplit(" ", 1)[0]
    return spans


def _ips(text: str) -> list[tuple[int, int]]:
    spans = []
    if ":" in text:  # IPv6 first: it may end in an IPv4 address (::ffff:203.0.113.9)
        for m in _IPV6.finditer(text):
            try:
                addr6 = ipaddress.IPv6Address(m.group())
            except ValueError:
                continue  # times (10:30:00), MAC addresses, C++ scopes
            if not (addr6.is_loopback or addr6.is_unspecified):
                spans.append(m.span())
    for m in _IPV4.finditer(text):
        if _overlaps(*m.span(), spans):
            continue
        if _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
            continue
        try:
            addr = ipaddress.IPv4Address(m.group())
        except ValueError:
            continue  # octet over 255, or a leading zero
        if not (addr.is_loopback or addr.is_unspecified or addr.is_multicast or addr.is_reserved):
            spans.append(m.span())  # reserved covers 240/4 and so netmasks like 255.255.255.0
    return spans


@functools.lru_cache(maxsize=1 << 16)
def _valid_ssn(value: str) -> bool:
    """python-stdnum's SSN rules: also rejects numbers published in advertising (078-05-1120)."""
    return bool(_ssn.is_valid(value))


def _national_ids(text: str) -> list[tuple[int, int]]:
    spans = [m.span() for m in _SSN.finditer(text) if _valid_ssn(m.group())]
    return spans + [m.span() for m in _UK_NI.finditer(text)]


@functools.cache
def _region(region: str) -> tuple[int, str, frozenset[int]]:
    """Country code, trunk prefix and possible national lengths of REGION, from phonenumbers' metadata."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None:
        raise ValueError(f"unknown phone region {region!r}")
    return meta.country_code, meta.national_prefix or "", frozenset(meta.general_desc.possible_length)


def _national_ok(digits: str, region: str) -> bool:
    """DIGITS, written without a country code, are a valid number of REGION as written.

    The trunk prefix must be there where the region writes one (GB's 0: without it any 10 digits would
    pass); NANP's 1 is optional. The number is then built from the metadata rather than with
    phonenumbers.parse, which costs ten times more and would accept digits it silently drops.
    """
    code, prefix, lengths = _region(region)
    if prefix and digits.startswith(prefix):
        nsn = digits[len(prefix):]
    elif prefix and prefix != "1":
        return False
    else:
        nsn = digits
    if len(nsn) not in lengths:
        return False
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(nsn))
    zeros = len(nsn) - len(nsn.lstrip("0"))
    if zeros:  # Italian-style numbers keep their leading zeros inside the national number
        number.italian_leading_zero = True
        number.number_of_leading_zeros = zeros if zeros > 1 else None
    return phonenumbers.is_valid_number_for_region(number, region)


@functools.lru_cache(maxsize=1 << 16)  # the same hotline recurs across a data set
def _valid_phone(candidate: str, regions: tuple[str, ...]) -> bool:
    """International numbers (+44 ...) are taken as phonenumbers judges them; national ones must also
    look written like a phone, not like an amount, a version, a date or an identifier."""
    digits = _NON_DIGIT.sub("", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    try:
        if candidate.startswith("+"):
            return phonenumbers.is_valid_number(phonenumbers.parse(candidate, None))
        if _DATE.search(candidate):
            return False
        groups = _DIGIT_RUN.findall(candidate)
        if len(groups) < 2 or any(len(g) < 2 for g in groups[1:]):
            return False  # bare digit runs are order numbers; 1-digit groups are versions (11.3.2188)
        if groups[0][0] != "0" and all(len(g) == 3 for g in groups[1:]) and not set("-()") & set(candidate):
            return False  # thousands grouping, as in amounts: 2 345 678 901 or 2.345.678.901
        return any(_national_ok(digits, r) for r in regions)
    except phonenumbers.NumberParseException:
        return False


def _phone_in(cand: str, offset: int, regions: tuple[str, ...]) -> tuple[int, int] | None:
    """The span of the phone in candidate CAND (at OFFSET in the text), if it holds one.

    A candidate may carry a neighbouring number ("on 12 202-555-0143"), so an end group is also tried
    without, but only where a space parts it from the rest: "4.0.30319" or "000-12-3456" hold no phone.
    """
    groups = [g.span() for g in _PHONE_GROUP.finditer(cand)]
    n = len(groups)
    drop_first = n >= 3 and cand[groups[0][1]:groups[1][0]].isspace()
    drop_last = n >= 3 and cand[groups[-2][1]:groups[-1][0]].isspace()
    for lo, hi in ((0, n), (0, n - 1), (1, n), (1, n - 1)):
        if (lo and not drop_first) or (hi < n and not drop_last) or hi - lo < 2 and (lo, hi) != (0, n):
            continue
        if _valid_phone(cand[groups[lo][0]:groups[hi - 1][1]], regions):
            return offset + groups[lo][0], offset + groups[hi - 1][1]
    return None


def _phones(text: str, regions: tuple[str, ...], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Phones outside TAKEN: a candidate that runs into a claimed span is cut there and searched again."""
    spans = []
    for m in _PHONE.finditer(text):
        cands = [m]
        if _overlaps(m.start(), m.end(), taken):
            cands = [c for s, e in _gaps(m.start(), m.end(), taken) for c in _PHONE.finditer(text, s, e)]
        for c in cands:
            span = _phone_in(c.group(), c.start(), regions)
            if span:
                spans.append(span)
    return spans


def _gaps(start: int, end: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [START, END) that no span in SPANS covers."""
    gaps, pos = [], start
    for s, e in sorted(spans):
        if s > pos and pos < end:
            gaps.append((pos, min(s, end)))
        pos = max(pos, e)
    return gaps + ([(pos, end)] if pos < end else [])


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < e and s < end for s, e in spans)


def find_pii(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> list[Match]:
    """Every piece of personal data in TEXT, in text order, without overlaps.

    Kinds are tried from the most to the least specific (IBAN, card, national ID, IP, e-mail, phone):
    a span claimed by one is not offered to the next, so a card number is never also a phone.
    """
    if not text or not PREFILTER_RE.search(text):
        return []
    found: list[Match] = []
    taken: list[tuple[int, int]] = []

    def claim(kind: str, spans: list[tuple[int, int]]) -> None:
        for s, e in spans:
            if not _overlaps(s, e, taken):
                taken.append((s, e))
                found.append(Match(kind, s, e, text[s:e]))

    claim(IBAN, _ibans(text))
    claim(CARD, _cards(text))
    claim(NATIONAL_ID, _national_ids(text))
    claim(IP, _ips(text))
    if "@" in text:
        claim(EMAIL, [m.span() for m in _EMAIL.finditer(text)])
    claim(PHONE, _phones(text, regions, taken))
    return sorted(found, key=lambda m: m.start)


def _star_alnum(value: str, keep_last: int) -> str:
    """Every letter and digit but the last KEEP_LAST becomes '*'; separators stay, so the shape reads."""
    positions = [i for i, ch in enumerate(value) if ch.isalnum()]
    hidden = set(positions[: max(0, len(positions) - keep_last)])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(value))


def mask(value: str, kind: str) -> str:
    """A form of VALUE safe to print in a report: enough to recognise it, never enough to use it."""
    if kind == EMAIL and "@" in value:
        local, domain = value.rsplit("@", 1)
        name, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{name[:1]}***.{tld}" if name else f"{local[:1]}***@***"
    if kind == CARD:
        digits = _NON_DIGIT.sub("", value)
        return "**** **** **** " + digits[-4:]
    if kind == IBAN:
        compact = value.replace(" ", "").upper()
        hidden = compact[:2] + "*" * (len(compact) - 6) + compact[-4:]
        return " ".join(hidden[i:i + 4] for i in range(0, len(hidden), 4))
    if kind == IP:
        if ":" in value:
            return value.split(":", 1)[0] + ":****:****"
        return value.split(".", 1)[0] + ".*.*.*"
    keep = 2 if kind in (PHONE, NATIONAL_ID) else 0
    return _star_alnum(value, keep)


def redact(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> tuple[str, list[Match]]:
    """TEXT with each piece of personal data replaced by a typed placeholder ([EMAIL], [CARD], ...).

    The placeholder keeps the sentence readable for training (the model still learns that an e-mail
    address goes here) while the value itself is gone. Matches index into the original text.
    """
    matches = find_pii(text, regions)
    if not matches:
        return text, matches
    parts, pos = [], 0
    for m in matches:
        parts += [text[pos:m.start], f"[{m.kind}]"]
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), matches
