from pathlib import Path

import datasets
import pyarrow as pa
import pytest

import tunelab.data.checks.pii  # noqa: F401  (registers the check)
from tunelab.data.checks.pii import candidate_rows, personal_data
from tunelab.data.doctor import CHECKS, DoctorContext, run_checks
from tunelab.data.pii import find_pii, luhn_ok, mask, redact
from tunelab.data.sources import read_source

# One real-format example of each kind (test values: documentation cards, IBANs and reserved ranges).
EXAMPLES = {
    "EMAIL": ["john.doe@example.com", "a.b+tag@mail.example.co.uk"],
    "PHONE": ["+1 (202) 555-0143", "+44 20 7946 0958", "020 7946 0958", "202-555-0143", "+442079460958"],
    "CARD": ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "4012888888881881"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "NL91 ABNA 0417 1643 00"],
    "IP": ["192.168.1.20", "8.8.8.8", "2001:db8::8a2e:370:7334", "fe80::1", "::ffff:203.0.113.9"],
    "NATIONAL_ID": ["536-22-8726", "AB 12 34 56 C", "AB123456D"],
}
PAIRS = [(kind, value) for kind, values in EXAMPLES.items() for value in values]

NOT_PII = [
    "paid $1,299.99 on 2024-01-15 at 10:30:00",
    "released 15.01.2024, price 1 299,99 EUR, 12/31/2023",
    "version 1.2.3, v10.0.19041.1234, build 4.0.30319.42000, python 3.11.4, 1.10.0-rc1, version 1.2.3.4",
    "card 4111 1111 1111 1112 fails Luhn, so does 1234 5678 9012 3456",
    "IBAN DE88 3704 0044 0532 0130 00 has a wrong check digit; GB82 WEST 1234 5698 7654 33 too",
    "order 12345678901234, invoice 2023-0456, ISBN 978-3-16-148410-0, zip 90210, 3:1:2 odds",
    "not SSNs: 000-12-3456 666-12-3456 912-34-5678 123-00-4567; not NI: QQ 12 34 56 C",
    "loopback 127.0.0.1 ::1, netmask 255.255.255.0, octet 256.1.1.1, time 12:30:45, mac 00:1A:2B:3C:4D:5E",
    "a plain sentence about email and calls, with no numbers at all",
    "4111111111111111.50 is a price, not a card",
    "amounts 2 345 678 901 EUR and 2.345.678.901 EUR, population 8 336 817",
]


def ctx_of(**splits: list[str]) -> DoctorContext:
    made = {name: datasets.Dataset.from_dict({"text": texts, "label": ["x"] * len(texts),
                                              "location": [f"{name}.csv:{i + 2}" for i in range(len(texts))]})
            for name, texts in splits.items()}
    return DoctorContext(splits=made, labels=["x"])


@pytest.mark.parametrize("kind,value", PAIRS)
def test_each_kind_is_found_with_its_span(kind: str, value: str) -> None:
    text = f"Contact: {value}. Thanks!"
    found = find_pii(text)
    assert [(m.kind, m.value) for m in found] == [(kind, value)]
    assert text[found[0].start:found[0].end] == value


@pytest.mark.parametrize("text", NOT_PII)
def test_ordinary_numbers_dates_prices_versions_and_invalid_values_are_not_flagged(text: str) -> None:
    assert find_pii(text) == []


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_neighbouring_text_is_not_swallowed() -> None:
    found = find_pii("call 12 202-555-0143 2 times or pay DE89 3704 0044 0532 0130 00 THEN stop")
    assert [(m.kind, m.value) for m in found] == [("PHONE", "202-555-0143"), ("IBAN", "DE89 3704 0044 0532 0130 00")]
    found = find_pii("call 202-555-0143 8.8.8.8 or 536-22-8726 202-555-0199")
    assert [m.kind for m in found] == ["PHONE", "IP", "NATIONAL_ID", "PHONE"]


@pytest.mark.parametrize("kind,value", PAIRS)
def test_mask_never_shows_the_raw_value(kind: str, value: str) -> None:
    masked = mask(value, kind)
    assert value not in masked and masked != value
    digits = [c for c in value if c.isdigit()]
    shown = [c for c in masked if c.isdigit()]
    assert len(shown) <= max(4, len(digits) // 3)  # at most the last few digits survive


def test_mask_shapes() -> None:
    assert mask("john@example.com", "EMAIL") == "j***@e***.com"
    assert mask("4111-1111-1111-1234", "CARD") == "**** **** **** 1234"
    assert mask("536-22-8726", "NATIONAL_ID") == "***-**-**26"
    assert mask("192.168.1.20", "IP") == "192.*.*.*"


def test_redact_uses_typed_placeholders_and_keeps_the_rest() -> None:
    text = ("Hi, I'm Jo (jo@example.org, +44 20 7946 0958). Card 4111 1111 1111 1111, IBAN GB82WEST12345698765432, "
            "from 203.0.113.9, SSN 536-22-8726. Order 1234 of 2024-01-15 cost $12.50.")
    clean, matches = redact(text)
    assert clean == ("Hi, I'm Jo ([EMAIL], [PHONE]). Card [CARD], IBAN [IBAN], from [IP], SSN [NATIONAL_ID]. "
                     "Order 1234 of 2024-01-15 cost $12.50.")
    assert [m.kind for m in matches] == ["EMAIL", "PHONE", "CARD", "IBAN", "IP", "NATIONAL_ID"]
    assert all(text[m.start:m.end] == m.value for m in matches)
    assert redact("nothing here 3.14") == ("nothing here 3.14", [])


def test_check_is_registered_as_a_warning_and_runs_with_the_others() -> None:
    assert CHECKS["personal-data"][0] == "warning"
    found = run_checks(ctx_of(train=["mail jo@example.org", "no data here"]))
    assert [f.details["kind"] for f in found if f.check == "personal-data"] == ["EMAIL"]


def test_check_reports_one_finding_per_kind_with_counts_locations_and_masked_examples() -> None:
    ctx = ctx_of(
        train=["fine text", "mail jo@example.org or al@example.net", "card 4111 1111 1111 1111",
               "price 12.99 on 2024-01-15", "call +1 (202) 555-0143"],
        test=["from 203.0.113.9", "mail bo@example.com", "IBAN DE89 3704 0044 0532 0130 00, SSN 536-22-8726"],
    )
    findings = personal_data(ctx)
    assert findings is not None
    by = {f.details["kind"]: f for f in findings}
    assert list(by) == ["EMAIL", "PHONE", "CARD", "IBAN", "IP", "NATIONAL_ID"]
    assert all(f.check == "personal-data" and f.severity == "warning" for f in findings)
    email = by["EMAIL"]
    assert email.count == 3 and email.details["texts"] == 2
    assert email.examples == ["train.csv:3: j***@e***.org", "train.csv:3: a***@e***.net", "test.csv:3: b***@e***.com"]
    assert "3 e-mail" in email.message and "train: 2" in email.message and "test: 1" in email.message
    assert by["CARD"].examples == ["train.csv:4: **** **** **** 1111"]
    assert by["PHONE"].examples == ["train.csv:6: +* (***) ***-**43"]
    assert by["IP"].examples == ["test.csv:2: 203.*.*.*"]
    assert by["IBAN"].examples[0].startswith("test.csv:4: DE**")
    assert by["NATIONAL_ID"].examples == ["test.csv:4: ***-**-**26"]
    assert all("tunelab data clean --redact-pii" in f.fix for f in findings)
    assert findings[0].details["by_kind"]["EMAIL"] == {"texts": 2, "matches": 3, "by_split": {"train": 2, "test": 1}}
    raw = ["jo@example.org", "4111 1111 1111 1111", "203.0.113.9", "536-22-8726", "DE89 3704 0044 0532 0130 00"]
    rendered = "\n".join(f.render() for f in findings) + repr([f.to_dict() for f in findings])
    assert not any(r in rendered for r in raw)


def test_examples_are_capped_and_count_every_match() -> None:
    findings = personal_data(ctx_of(train=[f"user{i}@example.com" for i in range(12)]))
    assert findings is not None and len(findings) == 1
    assert findings[0].count == 12 and len(findings[0].examples) == 5 and "... and 7 more" in findings[0].render()


def test_clean_data_gives_no_finding() -> None:
    assert personal_data(ctx_of(train=NOT_PII, validation=["hello"])) is None


def test_locations_come_from_the_source_file(tmp_path: Path) -> None:
    path = tmp_path / "tickets.csv"
    path.write_text("text,label\nhello,a\n\"write to me@example.com, please\",b\n", encoding="utf-8")
    ds = read_source(str(path)).select([1, 0])  # an index mapping must not shift the locations
    findings = personal_data(DoctorContext(splits={"train": ds}, labels=["a", "b"]))
    assert findings is not None and findings[0].examples == [f"{path}:3: m***@e***.com"]


def test_prefilter_keeps_every_pii_text_and_drops_plain_ones() -> None:
    texts = ["no digits here", "", "v1.2", "x jo@example.org", "tel 020 7946 0958", "fe80::1", "DE89"]
    keep = [3, 4, 5, 6]
    assert candidate_rows(pa.chunked_array([texts]))[0] == keep
    assert candidate_rows(texts) == (keep, [texts[i] for i in keep])
    assert all(candidate_rows([f"say {v}"])[0] == [0] for _, v in PAIRS)
