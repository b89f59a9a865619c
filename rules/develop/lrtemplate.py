"""Reader for Lightroom 1-7.2 ``.lrtemplate`` develop presets.

A ``.lrtemplate`` is a Lua source file holding one table assignment::

    s = {
        id = "...", internalName = "Punch",
        title = ZSTR "$$$/AgDevelop/Presets/Punch=Punch",
        type = "Develop",
        value = { settings = { Exposure2012 = 0.3,
                               ToneCurvePV2012 = { 0, 0, 64, 60, 255, 255 } },
                  uuid = "..." },
        version = 0,
    }

It is read with a tokenizer and a recursive-descent parser for just that
data subset of Lua 5.x - strings with escapes, long brackets ``[[...]]``,
numbers (decimal, hexadecimal, exponents, unary minus), ``true``/``false``/
``nil``, nested tables with ``name = v``, ``["key"] = v``, ``[1] = v`` and
positional entries, ``--`` and ``--[[ ]]`` comments, and the
``ZSTR "..."`` localised-string form. Nothing is evaluated: any other Lua
(function calls, field access, operators, statements) is a syntax error, so
``os.execute(...)`` in a hostile file is rejected, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rules.develop.preset_types import Preset, PresetError, check_size, make_preset

#: Deepest table nesting accepted; real presets nest about 6 levels (masks).
MAX_DEPTH = 32

#: Names that may prefix a string literal: Lightroom's localised-string calls.
LOCALISED_STRING_CALLS = frozenset({"ZSTR", "LOC"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX_NUMBER = re.compile(r"0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)"
                         r"(?:[pP][+-]?[0-9]+)?")
_DECIMAL_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_LONG_BRACKET = re.compile(r"\[(=*)\[")
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_PUNCTUATION = frozenset("{}[]=,;-")
_PLAIN_RUN = {quote: re.compile(rf"[^{quote}\\\n]+") for quote in "\"'"}
_DECIMAL_ESCAPE = re.compile(r"[0-9]{1,3}")
_HEX_ESCAPE = re.compile(r"x([0-9a-fA-F]{2})")
_UNICODE_ESCAPE = re.compile(r"u\{([0-9a-fA-F]{1,8})\}")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"', "'": "'", "\n": "\n", "\r": "\n"}


@dataclass(frozen=True)
class Token:
    """A lexical token: ``kind`` is name, string, number, punct or eof."""

    kind: str
    value: object
    line: int
    column: int


class _Lexer:
    """Splits Lua data text into :class:`Token` objects with 1-based positions."""

    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.index = 0
        self.line = 1
        self.line_start = 0

    def error(self, message: str, index: int | None = None) -> PresetError:
        index = self.index if index is None else index
        line = self.text.count("\n", 0, index) + 1
        column = index - (self.text.rfind("\n", 0, index) + 1) + 1
        return PresetError(f"{self.source}:{line}:{column}: {message}")

    def _advance(self, end: int) -> None:
        newlines = self.text.count("\n", self.index, end)
        if newlines:
            self.line += newlines
            self.line_start = self.text.rfind("\n", self.index, end) + 1
        self.index = end

    def next_token(self) -> Token:
        """The next token; at the end of the text, an ``eof`` token (repeatedly)."""
        self._skip_space_and_comments()
        line, column = self.line, self.index - self.line_start + 1
        if self.index >= len(self.text):
            return Token("eof", None, line, column)
        kind, value = self._next()
        return Token(kind, value, line, column)

    def _skip_space_and_comments(self) -> None:
        while True:
            match = _WHITESPACE.match(self.text, self.index)
            if match:
                self._advance(match.end())
            if not self.text.startswith("--", self.index):
                return
            bracket = _LONG_BRACKET.match(self.text, self.index + 2)
            if bracket:
                self._long_bracket(self.index + 2, bracket, "comment")
            else:
                end = self.text.find("\n", self.index)
                self._advance(len(self.text) if end < 0 else end)

    def _long_bracket(self, start: int, opener: re.Match, what: str) -> str:
        closer = "]" + opener.group(1) + "]"
        end = self.text.find(closer, opener.end())
        if end < 0:
            raise self.error(f"unfinished long {what} (no closing {closer!r})", start)
        body = self.text[opener.end():end]
        self._advance(end + len(closer))
        return body[1:] if body.startswith("\n") else body

    def _next(self) -> tuple[str, object]:
        char = self.text[self.index]
        if char in "\"'":
            return "string", self._short_string(char)
        if char == "[":
            bracket = _LONG_BRACKET.match(self.text, self.index)
            if bracket:
                return "string", self._long_bracket(self.index, bracket, "string")
        if char.isdigit() or (char == "." and self.text[self.index + 1:self.index + 2].isdigit()):
            return "number", self._number()
        name = _NAME.match(self.text, self.index)
        if name:
            self._advance(name.end())
            return "name", name.group()
        if char in _PUNCTUATION:
            self._advance(self.index + 1)
            return "punct", char
        raise self.error(f"unexpected character {char!r}; only Lua data tables are allowed")

    def _number(self) -> int | float:
        start = self.index
        match = _HEX_NUMBER.match(self.text, start) or _DECIMAL_NUMBER.match(self.text, start)
        end = match.end()
        if end < len(self.text) and (self.text[end].isalnum() or self.text[end] in "_."):
            raise self.error(f"malformed number {self.text[start:end + 1]!r}", start)
        self._advance(end)
        text = match.group().lower()
        try:
            if text.startswith("0x"):
                return float.fromhex(text) if "." in text or "p" in text else int(text, 16)
            return float(text) if "." in text or "e" in text else int(text)
        except (ValueError, OverflowError):
            raise self.error(f"number {text[:20]!r} is out of range", start) from None

    def _short_string(self, quote: str) -> str:
        start = self.index
        text = self.text
        plain = _PLAIN_RUN[quote]
        position = start + 1
        parts = []
        while True:
            run = plain.match(text, position)
            if run:
                parts.append(run.group())
                position = run.end()
            if position >= len(text):
                raise self.error("unfinished string (end of file before the closing quote)",
                                 start)
            char = text[position]
            if char == quote:
                self._advance(position + 1)
                return "".join(parts)
            if char == "\n":
                raise self.error("unfinished string (line break before the closing quote)",
                                 start)
            position = self._escape(position, parts)

    def _escape(self, position: int, parts: list[str]) -> int:
        """Decode the escape sequence at ``position`` into ``parts``; return the next index."""
        text = self.text
        escape = text[position + 1:position + 2]
        if escape in _ESCAPES:
            parts.append(_ESCAPES[escape])
            return position + 2
        if escape == "z":
            space = _WHITESPACE.match(text, position + 2)
            return space.end() if space else position + 2
        decimal = _DECIMAL_ESCAPE.match(text, position + 1)
        hexadecimal = _HEX_ESCAPE.match(text, position + 1)
        unicode = _UNICODE_ESCAPE.match(text, position + 1)
        if decimal and int(decimal.group()) <= 255:
            parts.append(chr(int(decimal.group())))
            return decimal.end()
        if hexadecimal:
            parts.append(chr(int(hexadecimal.group(1), 16)))
            return hexadecimal.end()
        if unicode and int(unicode.group(1), 16) <= 0x10FFFF:
            parts.append(chr(int(unicode.group(1), 16)))
            return unicode.end()
        raise self.error(f"invalid escape sequence {text[position:position + 2]!r}", position)


class _Parser:
    """Recursive descent over the tokens of one ``name = { ... }`` chunk.

    Tokens are pulled from the lexer on demand with at most two of lookahead,
    so memory stays bounded by the nesting depth, not the file size.
    """

    def __init__(self, lexer: _Lexer, source: str):
        self.lexer = lexer
        self.source = source
        self.lookahead: list[Token] = []

    def error(self, message: str, token: Token | None = None) -> PresetError:
        token = token or self.peek()
        return PresetError(f"{self.source}:{token.line}:{token.column}: {message}")

    def peek(self, ahead: int = 0) -> Token:
        while len(self.lookahead) <= ahead:
            self.lookahead.append(self.lexer.next_token())
        return self.lookahead[ahead]

    def take(self) -> Token:
        token = self.peek()
        del self.lookahead[0]
        return token

    def expect(self, value: str) -> Token:
        token = self.take()
        if token.kind != "punct" or token.value != value:
            raise self.error(f"expected {value!r}, found {_describe(token)}", token)
        return token

    def chunk(self) -> dict | list:
        name = self.take()
        if name.kind != "name":
            raise self.error(f"expected a table assignment such as 's = {{', found "
                             f"{_describe(name)}", name)
        self.expect("=")
        if self.peek().value != "{" or self.peek().kind != "punct":
            raise self.error(f"expected '{{' after '{name.value} =', found "
                             f"{_describe(self.peek())}")
        table = self.value(depth=0)
        if self.peek().kind != "eof":
            raise self.error(f"expected end of file after the table, found "
                             f"{_describe(self.peek())}")
        return table

    def value(self, depth: int) -> object:
        token = self.take()
        if token.kind in ("string", "number"):
            return token.value
        if token.kind == "punct" and token.value == "-":
            sign = -1
            while self.peek().kind == "punct" and self.peek().value == "-":
                self.take()
                sign = -sign
            number = self.take()
            if number.kind != "number":
                raise self.error(f"expected a number after '-', found {_describe(number)}",
                                 number)
            return sign * number.value
        if token.kind == "punct" and token.value == "{":
            return self.table(token, depth + 1)
        if token.kind == "name":
            if token.value in ("true", "false"):
                return token.value == "true"
            if token.value == "nil":
                return None
            if token.value in LOCALISED_STRING_CALLS and self.peek().kind == "string":
                return self.take().value
        raise self.error(f"expected a value, found {_describe(token)}", token)

    def table(self, opening: Token, depth: int) -> dict | list:
        if depth > MAX_DEPTH:
            raise self.error(f"tables nested deeper than {MAX_DEPTH} levels", opening)
        keyed: dict = {}
        positional: list = []
        while not (self.peek().kind == "punct" and self.peek().value == "}"):
            if self.peek().kind == "eof":
                raise self.error(f"unclosed table opened at line {opening.line}, "
                                 f"column {opening.column}")
            self.field(keyed, positional, depth)
            separator = self.peek()
            if separator.kind == "punct" and separator.value in (",", ";"):
                self.take()
            elif not (separator.kind == "punct" and separator.value == "}"):
                raise self.error(f"expected ',' or '}}' in table, found {_describe(separator)}")
        self.take()
        if not keyed:
            return positional
        for index, item in enumerate(positional, start=1):
            keyed[index] = item
        return keyed

    def field(self, keyed: dict, positional: list, depth: int) -> None:
        token = self.peek()
        following = self.peek(1)
        if token.kind == "name" and following.kind == "punct" and following.value == "=":
            self.take()
            self.take()
            _store(keyed, token.value, self.value(depth))
        elif token.kind == "punct" and token.value == "[":
            self.take()
            key = self.value(depth)
            if key is None or isinstance(key, (dict, list)):
                raise self.error("table keys must be strings, numbers or booleans", token)
            self.expect("]")
            self.expect("=")
            _store(keyed, key, self.value(depth))
        else:
            positional.append(self.value(depth))


def _store(keyed: dict, key: object, value: object) -> None:
    """Assign like Lua: a later key wins, and a nil value means absent."""
    keyed.pop(key, None)
    if value is not None:
        keyed[key] = value


def _describe(token: Token) -> str:
    if token.kind == "eof":
        return "end of file"
    if token.kind == "string":
        return "a string"
    return repr(token.value)


def parse_lrtemplate(text: str, source: str = "<text>") -> dict | list:
    """Parse the Lua table of a ``.lrtemplate`` into Python values.

    Parameters
    ----------
    text : str
        The file's text: one assignment ``name = { ... }``.
    source : str
        Name used in error messages.

    Returns
    -------
    dict or list
        The table: a list when it has only positional entries, else a dict
        (positional entries under integer keys 1, 2, ...). Strings, ints,
        floats and booleans map to their Python types; ``nil`` entries are
        absent.

    Raises
    ------
    PresetError
        ``source:line:column: problem`` for anything outside the data subset
        of Lua, unterminated strings or comments, or nesting deeper than
        :data:`MAX_DEPTH`.
    """
    lexer = _Lexer(text.removeprefix("\ufeff"), source)
    return _Parser(lexer, source).chunk()


def read_lrtemplate(data: bytes, source: str = "<bytes>", *, name: str | None = None) -> Preset:
    """Read a ``.lrtemplate`` develop preset.

    Parameters
    ----------
    data : bytes
        The file's contents, UTF-8.
    source : str
        Where the bytes came from, used in messages and kept in the result.
    name : str or None
        Pseudo-user name; ``None`` derives it from the title.

    Returns
    -------
    Preset
        The settings of ``value.settings``; the title is ``title`` with a
        ``$$$/...=`` localisation key removed, else ``internalName``.

    Raises
    ------
    PresetError
        For text that is not UTF-8, a syntax error (with line and column), or
        a table that is not a Develop preset.
    """
    check_size(data, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PresetError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") \
            from None
    table = parse_lrtemplate(text, source)
    if not isinstance(table, dict):
        raise PresetError(f"{source}: the preset table has no named fields")
    if table.get("type") != "Develop":
        raise PresetError(f"{source}: type is {table.get('type')!r}, not a 'Develop' preset")
    value = table.get("value")
    settings = value.get("settings") if isinstance(value, dict) else None
    if not isinstance(settings, dict):
        raise PresetError(f"{source}: no value.settings table")
    return make_preset(settings, title=_title(table), name=name, source=source)


def _title(table: dict) -> str:
    """Display title: ``"$$$/Key/Path=Text"`` localisation keys give ``Text``."""
    title = table.get("title", table.get("internalName", ""))
    if not isinstance(title, str):
        return ""
    if title.startswith("$$$/") and "=" in title:
        return title.split("=", 1)[1]
    return title
