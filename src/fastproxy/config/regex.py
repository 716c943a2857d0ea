"""RE2 (Envoy's regex dialect) -> POSIX extended regular expressions.

Envoy compiles ``safe_regex`` and ``regex_rewrite`` patterns with RE2. fastproxy's core
matches with the C library's POSIX regex engine (``regcomp(REG_EXTENDED)``/``regexec``),
which runs without the GIL. This module translates the RE2 syntax people actually write
into an equivalent ERE and rejects, with a ConfigError naming the field, what ERE cannot
express faithfully.

The model keeps Envoy's RE2 text (so a config means what Envoy's documentation says); the
core calls :func:`re2_to_posix` (and :func:`rewrite_to_posix` for ``regex_rewrite``) when it
compiles a config.

Translated
    literals and escaped punctuation (``\\.``, ``\\/``, ``\\{`` ...), ``\\Q...\\E``;
    ``\\d \\D \\w \\W \\s \\S`` (ASCII, as in RE2), outside and inside ``[...]``;
    ``[[:alpha:]]``-style classes and their RE2 negations ``[[:^alpha:]]`` (ASCII);
    ``\\a \\f \\t \\n \\r \\v \\xHH \\x{HHHH}``; ``.`` (any character but newline, as in
    RE2); ``(?:...)`` and named groups (both become plain POSIX groups: see the group map);
    ``\\A`` and ``\\z`` (POSIX ``^``/``$`` without REG_NEWLINE mean exactly that);
    ``* + ? {n} {n,} {n,m}`` (RE2's limit of 1000 applies); a ``{`` that does not start a
    repetition is a literal, as in RE2.
Rejected
    non-greedy quantifiers (``*?`` ...), lookarounds, flags (``(?i)`` ...), backreferences and
    octal escapes, ``\\b \\B``, ``\\C``, ``\\p{..}``/``\\P{..}``, ``\\Z``, non-ASCII characters
    inside ``[...]``, a quantifier with nothing (or an anchor) to repeat, NUL.

How the core must use the result
    * Run regcomp/regexec under the "C" locale (``uselocale(newlocale(LC_ALL_MASK, "C", 0))``
      on the thread): Python sets LC_CTYPE from the environment, and in a UTF-8 locale glibc
      refuses to match ``.`` against bytes that are not valid UTF-8, while RE2 (and Envoy)
      match them. In the C locale ``.`` and ``[^...]`` match one byte: a non-ASCII character
      (several bytes) therefore counts as several characters for ``.{n}``; paths on the wire
      are ASCII (percent-encoded), so this only matters for exotic header values.
    * Envoy's route ``safe_regex`` (and a StringMatcher's) is a full match. Either compile
      ``re2_to_posix(p, path, full_match=True)`` (anchored, may use REG_NOSUB) or check that
      the match found by regexec spans the whole subject (POSIX finds the leftmost-longest
      match, so a full match is found whenever one exists).
    * ``regex_rewrite`` replaces every non-overlapping match (RE2::GlobalReplace): after
      the first match, call regexec on the rest of the subject with REG_NOTBOL (so '^' does
      not match there), and after an empty match copy one character before searching again.
      :func:`rewrite_to_posix` gives the substitution as literal strings and POSIX group
      numbers (regmatch_t indexes). POSIX
      picks the leftmost-*longest* match where RE2 picks the leftmost-first one: ``a|ab`` on
      "ab" matches "a" in RE2 and "ab" in POSIX. Patterns whose alternatives cannot both
      match at the same position (the usual case) behave the same.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Union

from ..errors import ConfigError

# RE2's repetition limit: {n,m} with n, m <= 1000.
MAX_REPEAT = 1000

# Characters that are special in a POSIX ERE outside brackets; escaping them with a
# backslash is defined by POSIX to give the literal character.
_ERE_SPECIAL = set(".[\\()*+?{|^$")

_ASCII = frozenset(range(1, 128))  # NUL can never reach regcomp (C string)
_DIGIT = frozenset(range(ord("0"), ord("9") + 1))
_UPPER = frozenset(range(ord("A"), ord("Z") + 1))
_LOWER = frozenset(range(ord("a"), ord("z") + 1))
_WORD = _DIGIT | _UPPER | _LOWER | {ord("_")}
_SPACE = frozenset(map(ord, "\t\n\f\r "))  # RE2's \s (no \v, unlike Perl and Python)

# RE2's [[:name:]] classes, all ASCII.
_POSIX_CLASSES = {
    "alnum": _DIGIT | _UPPER | _LOWER,
    "alpha": _UPPER | _LOWER,
    "ascii": frozenset(range(1, 128)),
    "blank": frozenset(map(ord, "\t ")),
    "cntrl": frozenset(range(1, 32)) | {127},
    "digit": _DIGIT,
    "graph": frozenset(range(33, 127)),
    "lower": _LOWER,
    "print": frozenset(range(32, 127)),
    "punct": frozenset(range(33, 127)) - _DIGIT - _UPPER - _LOWER,
    "space": frozenset(map(ord, "\t\n\v\f\r ")),
    "upper": _UPPER,
    "word": _WORD,
    "xdigit": _DIGIT | frozenset(map(ord, "ABCDEFabcdef")),
}

_PERL_CLASSES = {"d": _DIGIT, "w": _WORD, "s": _SPACE}

_CONTROL_ESCAPES = {"a": "\a", "f": "\f", "t": "\t", "n": "\n", "r": "\r", "v": "\v"}

_REPEAT = re.compile(r"\{([0-9]+)(?:(,)([0-9]*))?\}")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class _CharSet:
    """A character class: a set of ASCII codes, plus whether every non-ASCII character is in
    it too (true for negated classes such as \\D or [^a])."""

    codes: frozenset
    non_ascii: bool = False

    def union(self, other: "_CharSet") -> "_CharSet":
        return _CharSet(self.codes | other.codes, self.non_ascii or other.non_ascii)

    def negate(self) -> "_CharSet":
        return _CharSet(_ASCII - self.codes, not self.non_ascii)


@dataclass
class Translation:
    """The result of translating one RE2 pattern.

    ``posix`` is the ERE. ``groups`` maps each RE2 capturing group (index 0 is group 1) to
    its number in ``posix``: they differ because ERE has no non-capturing groups, so
    ``(?:...)`` becomes a numbered group too.
    """

    posix: str
    groups: List[int] = field(default_factory=list)


def re2_to_posix(pattern: str, path: str, *, full_match: bool = False) -> str:
    """Translate an RE2 pattern into a POSIX ERE (see the module docstring).

    With ``full_match`` the result is anchored (``^(...)$``) so that a plain regexec, even
    with REG_NOSUB, tells whether the whole subject matches. Errors are
    ``ConfigError(path, ...)``.
    """
    posix = translate(pattern, path).posix
    return f"^({posix})$" if full_match else posix


def translate(pattern: str, path: str) -> Translation:
    """Translate an RE2 pattern; also returns where each RE2 group ended up."""
    if not isinstance(pattern, str):
        raise ConfigError(path, f"a regex must be a string, got {type(pattern).__name__}")
    if not pattern:
        raise ConfigError(path, "a regex must not be empty")
    return _Parser(pattern, path).parse()


def rewrite_to_posix(pattern: str, substitution: str, path: str, substitution_path: str = "") -> tuple:
    """Translate a regex_rewrite: returns (posix pattern, substitution parts).

    The substitution uses RE2's rewrite syntax: ``\\0``..``\\9`` insert a capture group (0 is
    the whole match), ``\\\\`` is a backslash; any other backslash, or a group the pattern
    does not have, is an error. The parts are literal strings and ints: POSIX group numbers
    (regmatch_t indexes) to insert, already mapped through the translation.
    """
    result = translate(pattern, path)
    return result.posix, substitution_parts(substitution, result, substitution_path or path)


def substitution_parts(substitution: str, translation: Translation, path: str) -> List[Union[str, int]]:
    if not isinstance(substitution, str):
        raise ConfigError(path, f"a substitution must be a string, got {type(substitution).__name__}")
    parts: List[Union[str, int]] = []
    literal: List[str] = []
    i = 0
    while i < len(substitution):
        c = substitution[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        nxt = substitution[i + 1:i + 2]
        if nxt == "\\":
            literal.append("\\")
        elif nxt.isdigit() and nxt.isascii():
            n = int(nxt)
            if n > len(translation.groups):
                raise ConfigError(path, f"substitution refers to group \\{n} but the pattern has "
                                        f"{len(translation.groups)} capture group(s)")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(0 if n == 0 else translation.groups[n - 1])
        else:
            raise ConfigError(path, f"invalid escape {substitution[i:i + 2]!r} in substitution at position {i} "
                                    "(use \\0-\\9 for groups, \\\\ for a backslash)")
        i += 2
    if literal:
        parts.append("".join(literal))
    return parts


def _bracket_items(codes: frozenset) -> str:
    """The inside of a bracket expression listing ``codes`` (non-empty), ordered so that no
    character takes a special meaning: ']' first, '[' late (never followed by ':', '.' or
    '='), '^' never first, '-' last."""
    specials = {ord("]"), ord("["), ord("^"), ord("-")}
    plain = sorted(codes - specials)
    out = []
    if ord("]") in codes:
        out.append("]")
    i = 0
    while i < len(plain):
        j = i
        while j + 1 < len(plain) and plain[j + 1] == plain[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{chr(plain[i])}-{chr(plain[j])}")
        else:
            out.extend(chr(c) for c in plain[i:j + 1])
        i = j + 1
    if ord("[") in codes:
        out.append("[")
    if ord("^") in codes:
        if not out:  # '^' first would negate: put '-' first instead (only {'^', '-'} gets here)
            out.append("-")
            codes = codes - {ord("-")}
        out.append("^")
    if ord("-") in codes:
        out.append("-")
    return "".join(out)


def _literal(ch: str) -> str:
    return "\\" + ch if ch in _ERE_SPECIAL else ch


class _Parser:
    """Recursive descent over RE2 syntax, emitting the ERE as it goes."""

    def __init__(self, pattern: str, path: str):
        self.p = pattern
        self.path = path
        self.i = 0
        self.posix_groups = 0
        self.groups: List[int] = []  # RE2 group k+1 -> POSIX group number

    def fail(self, message: str, at: int = -1) -> ConfigError:
        at = self.i if at < 0 else at
        return ConfigError(self.path, f"{message} (at position {at} of {self.p!r})")

    def parse(self) -> Translation:
        out = self.alternation(depth=0)
        if self.i < len(self.p):  # only a stray ')' stops the top level early
            raise self.fail("unmatched ')'")
        return Translation(out, self.groups)

    def peek(self, n: int = 1) -> str:
        return self.p[self.i:self.i + n]

    def alternation(self, depth: int) -> str:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        if self.peek() == ")" and depth == 0:
            raise self.fail("unmatched ')'")
        return "|".join(branches)

    def sequence(self) -> str:
        out = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            start = self.i
            prefix, atom, repeatable = self.atom()
            quant = self.quantifier()
            if quant:
                if not repeatable:
                    raise self.fail("a quantifier needs something to repeat (not an anchor)", start)
                if len(atom) == 1 and not atom.isascii():
                    # A multi-byte character: in the C locale a quantifier would repeat only
                    # its last byte, so group it (a POSIX group that is no RE2 group).
                    self.posix_groups += 1
                    atom = f"({atom})"
                atom += quant
            out.append(prefix + atom)
        return "".join(out)

    def quantifier(self) -> str:
        quant = self.one_quantifier()
        if not quant:
            return ""
        if self.peek() == "?":
            raise self.fail("non-greedy quantifiers (*?, +?, ??, {n,m}?) are not supported by POSIX regex")
        if self.one_quantifier(probe=True):
            raise self.fail("bad repetition operator: a quantifier cannot follow another")
        return quant

    def one_quantifier(self, probe: bool = False) -> str:
        c = self.peek()
        if c in ("*", "+", "?") and c:
            if not probe:
                self.i += 1
            return c
        if c == "{":
            m = _REPEAT.match(self.p, self.i)
            if m is None:
                return ""  # a literal '{', as in RE2
            low = int(m.group(1))
            high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
                raise self.fail(f"bad repetition operator {m.group(0)} (counts must be <= {MAX_REPEAT}, min <= max)")
            if not probe:
                self.i = m.end()
            return m.group(0)
        return ""

    def atom(self) -> tuple:
        """Returns (ERE text, ERE text a quantifier would apply to, whether one may)."""
        c = self.p[self.i]
        if c == "(":
            return "", self.group(), True
        if c == "[":
            return "", self.bracket(), True
        if c == ".":
            self.i += 1
            return "", "[^\n]", True  # RE2's '.' does not match a newline (no (?s) flag)
        if c in "^$":
            self.i += 1
            return "", c, False
        if c in "*+?":
            raise self.fail("a quantifier needs something to repeat")
        if c == "{" and _REPEAT.match(self.p, self.i):
            raise self.fail("a quantifier needs something to repeat")
        if c == "\\":
            return self.escape()
        self.i += 1
        if c == "\0":
            raise self.fail("NUL characters are not supported in a regex", self.i - 1)
        return "", _literal(c), True

    def group(self) -> str:
        start = self.i
        self.i += 1
        capturing = True
        if self.peek() == "?":
            rest = self.p[self.i + 1:]
            if rest.startswith(":"):
                capturing = False
                self.i += 2
            elif rest.startswith(("P<", "<")) and not rest.startswith(("<=", "<!")):
                self.i += 3 if rest.startswith("P<") else 2
                name = _GROUP_NAME.match(self.p, self.i)
                if name is None or self.p[name.end():name.end() + 1] != ">":
                    raise self.fail("invalid named group", start)
                self.i = name.end() + 1
            elif rest.startswith(("=", "!", "<=", "<!")):
                raise self.fail("lookahead and lookbehind assertions are not supported", start)
            elif rest.startswith("P="):
                raise self.fail("backreferences are not supported", start)
            else:
                raise self.fail("regex flags such as (?i) are not supported by fastproxy "
                                "(POSIX regex has no inline flags); spell the cases out, e.g. [Aa]", start)
        self.posix_groups += 1
        if capturing:
            self.groups.append(self.posix_groups)
        inner = self.alternation(depth=1)
        if self.peek() != ")":
            raise self.fail("missing ')'", start)
        self.i += 1
        return f"({inner})"

    def escape(self) -> tuple:
        start = self.i
        c = self.p[self.i + 1:self.i + 2]
        if not c:
            raise self.fail("trailing backslash", start)
        self.i += 2
        if c.lower() in _PERL_CLASSES:
            cls = _CharSet(_PERL_CLASSES[c.lower()])
            return "", self.emit_set(cls.negate() if c.isupper() else cls), True
        if c == "A":
            return "", "^", False
        if c == "z":
            return "", "$", False
        if c == "Q":
            end = self.p.find("\\E", self.i)
            text = self.p[self.i:] if end < 0 else self.p[self.i:end]
            self.i = len(self.p) if end < 0 else end + 2
            if not text:
                return "", "", False
            if "\0" in text:
                raise self.fail("NUL characters are not supported in a regex", start)
            # A quantifier after \Q...\E applies to the last character only, as in RE2.
            return "".join(_literal(ch) for ch in text[:-1]), _literal(text[-1]), True
        return "", _literal(self.escaped_char(c, start)), True

    def escaped_char(self, c: str, start: int) -> str:
        """A backslash escape that stands for one character (after "\\" and c were taken)."""
        if c in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[c]
        if c == "x":
            return self.hex_escape(start)
        if c in "bB":
            raise self.fail("word boundaries (\\b, \\B) are not supported by POSIX regex", start)
        if c in "pP":
            raise self.fail("Unicode classes (\\p, \\P) are not supported", start)
        if c == "C":
            raise self.fail("\\C (any byte) is not supported", start)
        if c.isdigit():
            raise self.fail("backreferences and octal escapes are not supported (use \\xHH for a character)", start)
        if c.isascii() and not c.isalnum() and c != "\0":
            return c  # escaped punctuation (or space): the character itself
        raise self.fail(f"invalid escape sequence \\{c}", start)

    def hex_escape(self, start: int) -> str:
        if self.peek() == "{":
            end = self.p.find("}", self.i)
            digits = self.p[self.i + 1:end] if end > 0 else ""
            self.i = end + 1 if end > 0 else self.i
        else:
            digits = self.p[self.i:self.i + 2]
            self.i += 2
            if len(digits) != 2:
                digits = ""
        if not digits or not all(d in "0123456789abcdefABCDEF" for d in digits) or len(digits) > 8:
            raise self.fail("invalid \\x escape (expected \\xHH or \\x{H...})", start)
        value = int(digits, 16)
        if value == 0:
            raise self.fail("NUL characters are not supported in a regex", start)
        if value > 0x10FFFF:
            raise self.fail("\\x escape out of range", start)
        return chr(value)

    # --- bracket expressions --------------------------------------------------------------

    def bracket(self) -> str:
        start = self.i
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        cls = _CharSet(frozenset())
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.fail("missing ']'", start)
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if self.peek(2) == "[:" and self.p.find(":]", self.i + 2) > 0:
                cls = cls.union(self.posix_class())
                continue
            item_start = self.i
            low = self.class_char()
            if isinstance(low, _CharSet):
                cls = cls.union(low)
                continue
            if self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                high = self.class_char()
                if isinstance(high, _CharSet):
                    raise self.fail("bad character class range", item_start)
                if ord(high) < ord(low):
                    raise self.fail(f"bad character class range {low}-{high}", item_start)
                cls = cls.union(_CharSet(frozenset(range(ord(low), ord(high) + 1))))
            else:
                cls = cls.union(_CharSet(frozenset([ord(low)])))
        return self.emit_set(cls.negate() if negated else cls)

    def posix_class(self) -> _CharSet:
        start = self.i
        end = self.p.find(":]", self.i + 2)
        name = self.p[self.i + 2:end]
        negated = name.startswith("^")
        codes = _POSIX_CLASSES.get(name[1:] if negated else name)
        if codes is None:
            raise self.fail(f"unknown character class [:{name}:]", start)
        self.i = end + 2
        cls = _CharSet(codes)
        return cls.negate() if negated else cls

    def class_char(self):
        """One member of a bracket expression: a character (str) or a class (_CharSet)."""
        start = self.i
        c = self.p[self.i]
        if c == "\\":
            e = self.p[self.i + 1:self.i + 2]
            if not e:
                raise self.fail("trailing backslash", start)
            self.i += 2
            if e.lower() in _PERL_CLASSES:
                cls = _CharSet(_PERL_CLASSES[e.lower()])
                return cls.negate() if e.isupper() else cls
            c = self.escaped_char(e, start)
        else:
            self.i += 1
        if c == "\0":
            raise self.fail("NUL characters are not supported in a regex", start)
        if not c.isascii():
            raise self.fail("non-ASCII characters inside [...] are not supported", start)
        return c

    def emit_set(self, cls: _CharSet) -> str:
        if not cls.non_ascii:
            if not cls.codes:
                raise self.fail("empty character class (matches nothing)")
            if len(cls.codes) == 1:
                return _literal(chr(next(iter(cls.codes))))
            return "[" + _bracket_items(cls.codes) + "]"
        excluded = _ASCII - cls.codes
        if not excluded:
            return "."  # everything; POSIX '.' matches newline too (no REG_NEWLINE)
        return "[^" + _bracket_items(excluded) + "]"


__all__ = ["re2_to_posix", "rewrite_to_posix", "translate", "Translation", "substitution_parts"]
