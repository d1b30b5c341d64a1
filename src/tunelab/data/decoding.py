"""Bytes to text for the file readers: UTF-8 (with or without a BOM), and UTF-16 / UTF-32 when a BOM says so.

A file that starts with a UTF-16 or UTF-32 byte-order mark is read, not refused: the BOM names the encoding
and its byte order exactly, so decoding it is as safe as decoding UTF-8, and everyday tools write such files
(Excel's "Unicode Text" export, Windows PowerShell 5's `>` and Out-File). Refusing would only send the user
to iconv to produce the very characters we can already decode.

Everything else must be UTF-8. Bytes that are not get an error naming the line and column and an iconv
command to re-save the file: UTF-16 without a BOM is recognised by its NUL bytes (the byte order is then a
guess from where the NULs sit, so it is an error with the exact command, not a silent read); otherwise the
advice is CP1252 (what Excel on Windows writes for Western languages) together with the offending line as
CP1252 reads it, so the user can see whether that is right before converting. Encoding detectors were
tried and rejected: on short Western-language texts they guessed mac_latin2, cp1250 or cp852 for files
written in CP1252, and converting with a wrong guess silently garbles every accented letter.
"""

from __future__ import annotations

import codecs
from pathlib import Path

# Longest first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
_SNIFF = 4096  # bytes looked at to recognise UTF-16 without a BOM


class EncodingProblem(ValueError):
    """Bytes that cannot be decoded; the message names the file, line and column and the re-save command."""


def _position(raw: bytes, start: int, encoding: str) -> tuple[int, int]:
    """1-based (line, column in characters) of byte offset START, decoding what precedes it."""
    before = raw[:start].decode(encoding, errors="replace")
    return before.count("\n") + 1, len(before) - before.rfind("\n")


def _utf16_without_bom(raw: bytes) -> str | None:
    """'UTF-16LE' / 'UTF-16BE' when the NUL bytes sit where ASCII text in UTF-16 puts them, else None."""
    head = raw[:_SNIFF]
    pairs = len(head) // 2
    if pairs < 2:
        return None
    even_nuls, odd_nuls = head[0:2 * pairs:2].count(0), head[1:2 * pairs:2].count(0)
    if odd_nuls > 0.4 * pairs and even_nuls < 0.05 * pairs:
        return "UTF-16LE"
    if even_nuls > 0.4 * pairs and odd_nuls < 0.05 * pairs:
        return "UTF-16BE"
    return None


def _line_text(raw: bytes, start: int) -> bytes:
    line_start = raw.rfind(b"\n", 0, start) + 1
    line_end = raw.find(b"\n", start)
    return raw[line_start:line_end if line_end >= 0 else len(raw)].rstrip(b"\r")


def _advice(path: Path, raw: bytes, start: int) -> str:
    """How to re-save PATH as UTF-8, given that decoding failed at byte START."""
    utf16 = _utf16_without_bom(raw)
    if utf16:
        return (f"The file looks like {utf16} without a byte-order mark (NUL bytes between the letters). Re-save "
                f"it as UTF-8: `iconv -f {utf16} -t UTF-8 '{path}' > '{path.with_suffix('.utf8' + path.suffix)}'`.")
    line = _line_text(raw, start)
    try:
        as_cp1252 = line.decode("cp1252")
    except UnicodeDecodeError:  # bytes CP1252 leaves undefined: some other encoding
        return ("Re-save the file as UTF-8 from the program that wrote it; `file -bi` may tell its encoding, "
                f"then `iconv -f THAT_ENCODING -t UTF-8 '{path}' > '{path.with_suffix('.utf8' + path.suffix)}'`.")
    shown = as_cp1252 if len(as_cp1252) <= 120 else as_cp1252[:117] + "..."
    return (f"Read as CP1252 (Excel's usual encoding on Windows) the line says {shown!r}; if that is right, "
            f"re-save it as UTF-8 with `iconv -f CP1252 -t UTF-8 '{path}' > "
            f"'{path.with_suffix('.utf8' + path.suffix)}'`, otherwise save it as UTF-8 from the program that "
            "wrote it (`file -bi` may tell its encoding).")


def decode_text(path: Path) -> str:
    """The whole of PATH as text: UTF-8, or UTF-16/UTF-32 when the file starts with their byte-order mark.

    Raises EncodingProblem naming the line, the column and the byte, with a command that re-saves the file."""
    raw = path.read_bytes()
    encoding, name = next(((enc, nm) for bom, enc, nm in _BOMS if raw.startswith(bom)), ("utf-8", "UTF-8"))
    if encoding == "utf-8" and _utf16_without_bom(raw):  # ASCII in UTF-16 is valid UTF-8, NULs and all
        raise EncodingProblem(f"{path}:1: the bytes are not UTF-8 text. {_advice(path, raw, 0)}")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line, column = _position(raw, err.start, encoding)
        if encoding != "utf-8":
            raise EncodingProblem(
                f"{path}:{line}: byte {err.start} (0x{raw[err.start]:02x}) is not valid {name} (column {column} of the "
                f"line), though the file starts with a {name} byte-order mark (a truncated or spliced file?). Re-save it "
                "as UTF-8 from the program that wrote it.") from None
        raise EncodingProblem(
            f"{path}:{line}: byte {err.start} (0x{raw[err.start]:02x}) is not valid UTF-8 (column {column} of the "
            f"line). "
            f"{_advice(path, raw, err.start)}") from None
