"""Pure-Python PTB tokenizer: what pycocoevalcap gets from Stanford CoreNLP 3.4.1 through Java.

pycocoevalcap writes every caption on its own line, runs
``java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` over the file and then drops the
tokens in :data:`PUNCTUATIONS`. This module reproduces that pipeline without Java:

* :class:`PTBLexer` emulates the JFlex scanner generated from CoreNLP 3.4.1's ``PTBLexer.flex`` with the
  options the command line implies (``tokenizeNLs``, all PTB3 escapes on, ``americanize`` off,
  untokenizable characters deleted): every rule is a regular expression, the longest match wins (its
  trailing context counts toward the length, as in JFlex) and ties go to the rule written first. The
  rules themselves (the flex file's macros, actions and rule table) are data in ``ptb_rules.py``.
* Java sees text as UTF-16 code units, so characters outside the Basic Multilingual Plane (emoji) are split
  into surrogate pairs before scanning and joined again afterwards; a lone emoji is "untokenizable" and
  deleted, exactly like the Java tool does.
* The corpus is scanned as one stream with the captions joined by newlines, because a few rules look past
  the end of a line (``"plan B."`` keeps its period unless the next caption starts with ``The``, ...).
* Speed: runs of plain words ("A man walks, then stops.") are split without the lexer where the rules
  provably give one token per word and mark; other whitespace-separated chunks are scanned once and
  memoised, keyed by the chunk and what the lexer can observe after it; lines where a token may span a
  space (fractions, phone numbers, spaced ellipses, SGML tags) are always scanned in full.

Known, deliberate differences from the Java pipeline: carriage returns and the other Unicode line
separators inside a caption are treated as spaces (pycocoevalcap turns them into extra output lines and
silently pairs every later caption with the wrong tokens), and Unicode character classes follow Python's
Unicode database rather than Java 7's.
"""

from __future__ import annotations

import re

import regex

from .ptb_rules import ABBREVIATION_DOT, KEEP, LONG_CONTEXTS, QUICK, RULES, SKIP

__all__ = ["PUNCTUATIONS", "PTBLexer", "PTBTokenizer", "tokenize_captions"]

# pycocoevalcap's removal list, compared with the *lower-cased* tokens: "-LRB-" etc. therefore never match.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])


class PTBLexer:
    """Longest-match scanner over the rules of CoreNLP 3.4.1's PTBLexer (default PTB3 options, tokenizeNLs)."""

    NEWLINE_TOKEN = "*NL*"

    def __init__(self):
        self._rules = []
        for name, head, trail, action in RULES:
            pattern = f"(?P<h>{head})" + (f"(?:{trail})" if trail else "")
            # The backtracking pattern decides cheaply whether the rule matches at all; the POSIX one
            # (leftmost-longest, as JFlex) is run only when it does, to get the longest match.
            quick = regex.compile(QUICK.get(name, pattern), regex.V0)
            self._rules.append((name, regex.compile(pattern, regex.POSIX | regex.V0), action, quick))
        self._candidates: dict[str, list[int]] = {}

    def _rules_for(self, ch: str) -> list[int]:
        """Indices of the rules whose match can start with `ch` (cached per character)."""
        found = self._candidates.get(ch)
        if found is None:
            found = [i for i, (_, pat, _, _) in enumerate(self._rules) if pat.match(ch, partial=True)]
            self._candidates[ch] = found
        return found

    def step(self, text: str, pos: int, endpos: int) -> tuple[str | None, int]:
        """Scan one token at `pos`, looking no further than `endpos`.

        Returns (token text, or None for skipped text, and the position after the token).
        """
        best_len, best = -1, None
        rules = self._rules
        for index in self._rules_for(text[pos]):
            _, longest, _, quick = rules[index]
            if quick.match(text, pos, endpos) is None:
                continue
            match = longest.match(text, pos, endpos)
            if match is not None and match.end() - pos > best_len:
                best_len, best = match.end() - pos, (index, match)
        index, match = best
        action = rules[index][2]
        head = match.group("h")
        if action is KEEP:
            return head, pos + len(head)
        if action is SKIP:
            return None, pos + len(head)
        if action == "newline":
            return self.NEWLINE_TOKEN, pos + len(head)
        result = action(head)
        if isinstance(result, tuple):
            return result[0], pos + result[1]
        return result, pos + len(head)


# ----------------------------------------------------------------------------------------------------------
# Driver: the corpus as one stream, with shortcuts that provably give the lexer's answer.
# ----------------------------------------------------------------------------------------------------------
_NON_BMP = regex.compile("[\U00010000-\U0010ffff]")
# Places where one token may span an ASCII space: fractions "1 1/2", phone numbers, ". . .", SGML tags.
_SPANS_SPACE = regex.compile(r"<|\p{Nd} \p{Nd}|[0-9)] [0-9(+]|\. \.")
_LINE_BREAKS = regex.compile("\r\n|[\r\u2028\u2029\u000b\u000c]")
_CHUNK = regex.compile("[^ \n]+")
# Plain words, each optionally followed by one of , ; : ! ? . (the bulk of real captions) need no lexer:
# every word is a token and so is its mark -- no other rule matches a run of ASCII letters -- except the
# assimilations the lexer splits ("cannot", "gonna", ...) and "word." forms that are abbreviations or
# acronyms, whose period depends on what follows (checked with the lexer's own patterns).
_SIMPLE_LINE = re.compile(r"[A-Za-z]+[,;:!?.]?(?: [A-Za-z]+[,;:!?.]?)*")
_SIMPLE_TOKEN = re.compile(r"[A-Za-z]+|[,;:!?.]")
_COMPLEX_CHUNK = re.compile(r"(?<![^ \n])(?![A-Za-z]+[,;:!?.]?(?![^ \n]))[^ \n]+")
_WORD_DOT = re.compile(r"[A-Za-z]+\.")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


def _surrogates(ch: str) -> str:
    code = ord(ch) - 0x10000
    return chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF))


def _from_utf16_units(token: str) -> str:
    return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_ABBREVIATION_CACHE: dict[str, bool] = {}


def _is_abbreviation(word_dot: str) -> bool:
    found = _ABBREVIATION_CACHE.get(word_dot)
    if found is None:
        found = _ABBREVIATION_CACHE[word_dot] = ABBREVIATION_DOT.fullmatch(word_dot) is not None
    return found


def _plain_tokens(text: str) -> list[str] | None:
    """Lower-cased tokens of plain words (see _SIMPLE_LINE) without the lexer, or None if it is needed."""
    tokens = _SIMPLE_TOKEN.findall(text.lower())
    if not _ASSIMILATIONS.isdisjoint(tokens):
        return None
    if "." in text:
        for word_dot in _WORD_DOT.findall(text):
            if _is_abbreviation(word_dot):
                return None
    return tokens


class PTBTokenizer:
    """Tokenise captions like pycocoevalcap's Java PTBTokenizer, then drop its punctuation list.

    Example:
        >>> PTBTokenizer().tokenize(["A man doesn't stop (really)."])
        ["a man does n't stop -lrb- really -rrb-"]
    """

    def __init__(self):
        self.lexer = PTBLexer()
        self._memo: dict[str, list[str]] = {}

    def raw_tokens(self, captions: list[str]) -> list[list[str]]:
        """PTB tokens of every caption (lower-cased, before punctuation removal), scanned as one stream.

        Args:
            captions: N caption strings; line breaks inside a caption count as spaces.
        Returns:
            N lists of tokens, as the Java tool prints them with ``-lowerCase``.
        """
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"captions[{index}] must be a string, got {type(caption).__name__}")
        lines = [_LINE_BREAKS.sub(" ", c.replace("\n", " ")) for c in captions]
        doc = "\n".join(lines)
        wide = _NON_BMP.search(doc) is not None
        if wide:
            doc = _NON_BMP.sub(lambda m: _surrogates(m.group()), doc)
            lines = doc.split("\n")
        out = []
        line_start = 0
        for line in lines:
            tokens = _plain_tokens(line) if _SIMPLE_LINE.fullmatch(line) else None
            if tokens is None:
                tokens = self._scan_line(doc, line_start, line)
                if wide:
                    tokens = [_from_utf16_units(t) for t in tokens]
            out.append(tokens)
            line_start += len(line) + 1
        return out

    def _scan_line(self, doc: str, line_start: int, line: str) -> list[str]:
        if _SPANS_SPACE.search(line):
            return self._scan_range(doc, line_start, line_start + len(line))
        tokens: list[str] = []
        done = 0
        for chunk_match in _COMPLEX_CHUNK.finditer(line):
            if chunk_match.start() > done:
                tokens.extend(self._plain_words(doc, line_start, line, done, chunk_match.start()))
            start, end = line_start + chunk_match.start(), line_start + chunk_match.end()
            chunk = chunk_match.group()
            key = chunk + self._context(doc, end, chunk)
            cached = self._memo.get(key)
            if cached is None:
                cached = self._scan_range(doc, start, end, check_end=True)
                if cached is None:  # a token ran past the chunk (not expected here): scan the line in full
                    return self._scan_range(doc, line_start, line_start + len(line))
                if "<" not in key:  # an SGML tag after the chunk may reach past the key's context
                    self._memo[key] = cached
            tokens.extend(cached)
            done = chunk_match.end()
        if done < len(line):
            tokens.extend(self._plain_words(doc, line_start, line, done, len(line)))
        return tokens

    def _plain_words(self, doc: str, line_start: int, line: str, start: int, end: int) -> list[str]:
        """Tokens of a run of plain words line[start:end] (each possibly followed by , ; : ! ? .)."""
        tokens = _plain_tokens(line[start:end])
        if tokens is not None:
            return tokens
        return self._scan_range(doc, line_start + start, line_start + end)

    @staticmethod
    def _context(doc: str, end: int, chunk: str) -> str:
        """What the lexer can see after a chunk, as a memo key suffix.

        One character, except after a period, where four trailing contexts of the lexer reach into the next
        chunk: their match lengths (and the next two characters' count) are all the lexer can observe.
        """
        if not chunk.endswith("."):
            return doc[end:end + 1]
        seen = [doc[end:end + 1], str(len(doc[end:end + 2]))]
        for context in LONG_CONTEXTS:
            match = context.match(doc, end)
            seen.append(str(match.end() - end) if match else "-")
        return "\x00".join(seen)

    def _scan_range(self, doc: str, start: int, stop: int, check_end: bool = False) -> list[str] | None:
        """Lower-cased tokens starting in doc[start:stop]; with check_end, None if one ends past `stop`."""
        # No token crosses a line break, and the lexer's lookahead after a line reaches at most to the end
        # of the next chunk: bound every match there (the regex engine may otherwise scan to the end of
        # the corpus looking for a required character).
        line_end = doc.find("\n", start)
        nxt = _CHUNK.search(doc, line_end) if line_end >= 0 else None
        endpos = nxt.end() + 1 if nxt else len(doc)
        tokens = []
        pos = start
        while pos < stop:
            token, pos = self.lexer.step(doc, pos, endpos)
            if token is not None and token != PTBLexer.NEWLINE_TOKEN:
                tokens.append(token.lower())
        if check_end and pos != stop:
            return None
        return tokens

    def tokenize(self, captions: list[str]) -> list[str]:
        """Each caption as pycocoevalcap returns it: space-joined lower-cased tokens without punctuation."""
        result = []
        for tokens in self.raw_tokens(captions):
            # Same post-processing as pycocoevalcap: rstrip the printed line, split on ' ', filter.
            line = " ".join(tokens).rstrip()
            result.append(" ".join(w for w in line.split(" ") if w not in PUNCTUATIONS))
        return result


def tokenize_captions(captions: list[str]) -> list[str]:
    """Convenience wrapper: :meth:`PTBTokenizer.tokenize` with a fresh tokenizer."""
    return PTBTokenizer().tokenize(captions)
