"""Pure-Python PTB tokenizer: what pycocoevalcap gets from Stanford CoreNLP 3.4.1 through Java.

pycocoevalcap writes every caption on its own line, runs
``java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` over the file and then drops the
tokens in :data:`PUNCTUATIONS`. This module reproduces that pipeline without Java:

* :class:`PTBLexer` emulates the JFlex scanner generated from CoreNLP 3.4.1's ``PTBLexer.flex`` with the
  options the command line implies (``tokenizeNLs``, all PTB3 escapes on, ``americanize`` off,
  untokenizable characters deleted): every rule is a regular expression, the longest match wins (its
  trailing context counts toward the length, as in JFlex) and ties go to the rule written first.
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

__all__ = ["PUNCTUATIONS", "PTBLexer", "PTBTokenizer", "tokenize_captions"]

# pycocoevalcap's removal list, compared with the *lower-cased* tokens: "-LRB-" etc. therefore never match.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])


def _ci(word: str) -> str:
    """A literal matched case-insensitively, as JFlex's %caseless does (character classes stay as written)."""
    parts = []
    for ch in word:
        if ch.isascii() and ch.isalpha():
            parts.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            parts.append(regex.escape(ch))
    return "".join(parts)


def _alts(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


# ----------------------------------------------------------------------------------------------------------
# Macros of PTBLexer.flex (CoreNLP 3.4.1), in Python `regex` syntax. Names follow the flex file.
# ----------------------------------------------------------------------------------------------------------
SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*"
        r"|[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>")
SPMDASH = "(?:&" + _alts(_ci("MD"), _ci("mdash"), _ci("ndash")) + ";|[\u0096\u0097\u2013\u2014\u2015])"
SPAMP = _ci("&amp;")
SPPUNC = "&" + _alts(*[_ci(w) for w in ("HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq")], "#[0-9]+") + ";"
SPLET = "&[aeiouAEIOU]" + _alts(_ci("acute"), _ci("grave"), _ci("uml")) + ";"
SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
SPACES = SPACE + "+"
NEWLINE = "(?:\r|\r?\n|\u2028|\u2029|\u000b|\u000c|\u0085)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
SPACENLS = SPACENL + "+"
SENTEND = f"{SPACENL}(?:{SPACENL}|\\p{{Lu}}|{SGML})"
DIGIT = r"[\p{Nd}\u07c0-\u07c9]"
DATE = f"{DIGIT}{{1,2}}[\\-/]{DIGIT}{{1,2}}[\\-/]{DIGIT}{{2,4}}"
NUM = f"(?:{DIGIT}+|{DIGIT}*(?:[.:,\u00ad\u066b\u066c]{DIGIT}+)+)"
NUMBER = f"[\\-+]?{NUM}"
SUBSUPNUM = "[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"
FRAC = f"(?:{DIGIT}{{1,4}}[- \u00a0])?{DIGIT}{{1,4}}(?:\\\\?/|\u2044){DIGIT}{{1,4}}"
FRAC2 = "[\u00bc\u00bd\u00be\u2153-\u215e]"
DOLSIGN = r"(?:[A-Z]*\$|#)"
DOLSIGN2 = "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
LETTER_CHARS = (
    r"\p{L}\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385"
    r"\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd\u05bf"
    r"\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff"
    r"\u070f\u0711\u0730-\u074f\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e"
    r"\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3"
    r"\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd"
    r"\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
)
LETTER = f"(?:[{LETTER_CHARS}]|{SPLET})"
JLETTER = r"\p{L}"  # JFlex [:letter:] (Java Character.isLetter)
JLETDIG = r"[\p{L}\p{Nd}]"
WORD = f"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
FILENAME_EXT = _alts(*[_ci(e) for e in (
    "bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 pdf php pl png "
    "ppt ps py sql tar txt wav x xml zip").split()])
FILENAME = f"(?:{LETTER}|{DIGIT})+(?:[.](?:{LETTER}|{DIGIT})+)*(?:[.]{FILENAME_EXT})"
APOS = "(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
APOSETCETERA = f"(?:{APOS}|[`\u0091\u2018\u201b])"
HYPHEN = "[-_\u058a\u2010\u2011]"
_THING_PART = f"(?:[dDoOlL]{APOSETCETERA}{JLETDIG})?{JLETDIG}+"
THING = f"{_THING_PART}(?:{HYPHEN}{_THING_PART})*"
THINGA = f"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
ACRO_SPECIAL = (_alts(*[_ci(w) for w in ("Canada", "Sino", "Korean", "EU", "Japan", "non")]) + "-" + _ci("U.S")
                + "|" + _ci("U.S.-") + _alts(_ci("U.K"), _ci("U.S.S.R")))
ACRO = rf"(?:[A-Za-z](?:\.[A-Za-z])*|{ACRO_SPECIAL})"
ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{ACRO_SPECIAL})"
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:[A-Za-z0-9\u00ad]+|{ACRO2}\\.))+"
REDAUX = APOS + _alts("[msdMSD]", _ci("re"), _ci("ve"), _ci("ll"))
SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
SREDAUX = _ci("n") + APOSETCETERA + _ci("t")
APOWORD = _alts(
    f"{APOS}{_ci('n')}{APOS}?", f"[lLdDjJ]{APOS}", _ci("Dunkin") + APOS, _ci("somethin") + APOS,
    _ci("ol") + APOS, APOS + _ci("em"), f"[A-HJ-XZn]{APOSETCETERA}{JLETTER}{{2}}{JLETTER}*",
    f"{APOS}[2-9]0{_ci('s')}", f"{APOS}{_ci('til')}{_ci('l')}?",
    f"{JLETTER}{JLETTER}*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z]{JLETTER}*", APOS + _ci("cause"),
    _ci("cont'd") + r"\.?", _ci("'twas"), _ci("nor'easter"), _ci("c'mon"), _ci("e'er"), _ci("s'mores"),
    _ci("ev'ry"), _ci("li'l"), _ci("nat'l"), _ci("O") + APOSETCETERA + _ci("o"))
APOWORD2 = _ci("y") + APOS
FULLURL = _ci("http") + _ci("s") + "?://" + r'[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},-]'
LIKELYURL = (r"(?:(?:" + _ci("www") + r'\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r"`'
             + r"'<>|.!?(){},-_$]+\.)+" + _alts(_ci("com"), _ci("net"), _ci("org"), _ci("edu")) + "))"
             + r'(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},-])?')
EMAIL = ("(?:" + _ci("&lt;") + "|<)?" + r'[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}]*@(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\.)*'
         + r'(?:[^ \t\n\f\r"<>|(){}.\u00a0]+)(?:' + _ci("&gt;") + "|>)?")
TWITTER = f"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+)"
ABMONTH = _alts(*[_ci(w) for w in "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec".split()])
ABDAYS = _alts(*[_ci(w) for w in "Mon Tue Tues Wed Thu Thurs Fri".split()])
ABSTATE = _alts(
    _ci("Ala"), _ci("Ariz"), "A" + _ci("z"), "A" + _ci("rk"), _ci("Calif"), _ci("Colo"), _ci("Conn"),
    _ci("Ct"), _ci("Dak"), "D" + _ci("el"), _ci("Fla"), _ci("Ga"), "I" + _ci("ll"), _ci("Ind"),
    _ci("Kan") + _ci("s") + "?", _ci("Ky"), "L" + _ci("a"), "M" + _ci("ass"), _ci("Md"), _ci("Mich"),
    _ci("Minn"), "M" + _ci("iss"), _ci("Mo"), _ci("Mont"), _ci("Neb"), _ci("Nev"), _ci("Okla"),
    "O" + _ci("re"), "P" + _ci("a"), _ci("Penn"), _ci("Tenn"), "T" + _ci("ex"), _ci("Va"), _ci("Vt"),
    "W" + _ci("ash"), _ci("Wis") + _ci("c") + "?", _ci("Wyo"))
ABCOMP = _alts(
    _ci("Inc"), _ci("Co") + _ci("s") + "?", _ci("Corp"), _ci("P") + _ci("p") + "?" + _ci("t") + "[ye]"
    + _ci("s") + "?", _ci("Ltd"), _ci("Plc"), _ci("Rt"), _ci("Bancorp"), _ci("Bhd"), _ci("Assn"), _ci("Univ"),
    _ci("Intl"), _ci("Sys"))
ABNUM = _alts(*[_ci(w) for w in "tel est ext sq".split()])
ABPTIT = _alts(_ci("Jr"), _ci("Sr"), _ci("Bros"), _alts(_ci("Ed"), _ci("Ph")) + r"\." + _ci("D"), _ci("Blvd"),
               _ci("Rd"), _ci("Esq"))
ABBREV1 = _alts(ABMONTH, ABDAYS, ABSTATE, ABCOMP, ABNUM, ABPTIT, _ci("etc"), _ci("al"), _ci("seq"),
                _ci("Bldg")) + r"\."
_ABTITLE_WORDS = ("Mr Mrs Ms Drs? Profs? Sens? Reps? Attys? Lt Col Gen Messrs Govs? Adm Rev Maj Sgt Cpl Pvt "
                  "Capt Ste? Ave Pres Lieut Hon Brig Co?mdr Pfc Spc Supts? Det Mt Ft Adj Adv Asst Assoc Ens "
                  "Insp Mlle Mme Msgr Sfc").split()


def _ci_opt(word: str) -> str:
    """Caseless literal where a trailing '?' makes the previous letter optional (flex 'Drs?', 'Co?mdr')."""
    out, i = [], 0
    while i < len(word):
        piece = _ci(word[i])
        if i + 1 < len(word) and word[i + 1] == "?":
            piece += "?"
            i += 1
        out.append(piece)
        i += 1
    return "".join(out)


ABTITLE = _alts(*[_ci_opt(w) for w in _ABTITLE_WORDS], "M" + _ci("iss"))
ABCOMP2 = _alts(_ci("Invt"), _ci("Elec"), _ci("Natl"), _ci("M") + "[ft]" + _ci("g"), _ci("Dept"))
ABBREV4 = _alts(ABTITLE, _ci("vs"), _ci("Alex"), _ci("Wm"), _ci("Jos"), _ci("Cie"), _ci("a.k.a"), _ci("cf"),
                _ci("TREAS"), _ci("Ph"), ACRO, ABCOMP2)
ABBREV2 = ABBREV4 + r"\."
ACRONYM = ACRO + r"\."
ABBREV3 = _alts(*[_ci_opt(w) for w in "ca figs? prop nos? art bldg prop pp op".split()]) + r"\."
PHONE = (r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])[0-9]{3,4}"
         r"[\- \u00a0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
LDOTS = r"(?:\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026])"
INSENTP = "[,;:\u3001]"
QUOTES = (f"(?:{APOS}|''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039"
          "\u203a\u00ab\u00bb]{1,2})")
DBLQUOT = '(?:"|' + _ci("&quot;") + ")"
TBSPEC = _alts(
    "-" + _alts(*[_ci(w) for w in "RRB LRB RCB LCB RSB LSB".split()]) + "-", _ci("C.D.s"), _ci("pro-"),
    _ci("anti-"), _ci("S") + "(?:&|" + SPAMP + ")" + _ci("P-500"), _ci("S") + "(?:&|" + SPAMP + ")" + _ci("Ls"),
    _ci("Cap") + APOS + _ci("n"), _ci("c") + APOS + _ci("est"))
TBSPEC2 = APOS + "[0-9][0-9]"
SMILEY = r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"
_AS = r"[\^x=~<>]"
ASIANSMILEY = _alts(
    # The flex file's first alternative escapes its second bracket, so it matches literal "[^x=~<>]" text.
    _AS + r"\.\[\^" + _ci("x") + r"=~<>\]", r"[\-\^x=~<>']_[\-\^x=~<>']", r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)",
    r"\([\^x=~<>']-[\^x=~<>'`]\)")
MISCSYMBOL = (
    "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be"
    "\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d"
    "\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b"
    "\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb"
    "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")
SENT_WORDS = _alts(*[
    w[0] + _ci(w[1:]) for w in (
        "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many "
        "More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This "
        "We When While What Yet You").split()], SGML)

# ----------------------------------------------------------------------------------------------------------
# Token actions: they turn the matched text into the token text (None: no token) and may push characters
# back, exactly like the Java actions of the same rule.
# ----------------------------------------------------------------------------------------------------------
_LEFT_SINGLE = regex.compile("[\u0091\u2018\u201b\u2039]")
_RIGHT_SINGLE = regex.compile("[\u0092\u2019\u203a]")
_LEFT_DOUBLE = regex.compile("[\u0093\u201c\u00ab]")
_RIGHT_DOUBLE = regex.compile("[\u0094\u201d\u00bb]")
_SINGLE = regex.compile("&apos;|'")
_DOUBLE = regex.compile('"|&quot;')
_AMP = regex.compile("(?i:&amp;)")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _latex_quotes(text: str, probably_left: bool) -> str:
    if probably_left:
        text = _DOUBLE.sub("``", _SINGLE.sub("`", text))
    else:
        text = _DOUBLE.sub("''", _SINGLE.sub("'", text))
    text = _LEFT_SINGLE.sub("`", text)
    text = _RIGHT_SINGLE.sub("'", text)
    text = _LEFT_DOUBLE.sub("``", text)
    return _RIGHT_DOUBLE.sub("''", text)


def _remove_soft_hyphens(text: str) -> str:
    if "\u00ad" not in text:
        return text
    return text.replace("\u00ad", "") or "-"


def _currency(text: str) -> str:
    text = text.replace("\u00a2", "cents").replace("\u00a3", "#")
    return regex.sub("[\u0080\u00a4\u20a0\u20ac]", "$", text)


def _parens(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


_JAVA_TRAILING_WS = " \t\n\u000b\u000c\r\u0085"


def _act_acronym(head: str):
    head = head.rstrip(_JAVA_TRAILING_WS)
    if len(head) == 2:  # "I." before "The": the letter, then the period as its own token
        return head[:1], 1
    return head, len(head) - 1  # the acronym with its period, then the period again


# (name, head pattern, trailing-context pattern or None, action). An action gets the head text and returns
# (token text or None, characters consumed) -- or just the token text when the whole head is consumed.
_KEEP = None
_SKIP = "skip"
_RULES = [
    ("c++", _ci("c") + r"[+][+]", None, _KEEP),
    ("c#", _alts(_ci("c"), _ci("f")) + "#", None, _KEEP),
    ("cannot", _ci("cannot"), None, lambda t: (t[:-3], len(t) - 3)),
    ("'twas", _ci("'twas"), None, lambda t: (t[:-3], len(t) - 3)),
    ("'tis", _ci("'tis"), None, lambda t: (t[:-2], len(t) - 2)),
    ("gonna", _alts(*[_ci(w) for w in "gonna gotta lemme gimme wanna".split()]), None,
     lambda t: (t[:-2], len(t) - 2)),
    ("SGML", SGML, None, lambda t: t.replace(" ", "\u00a0")),
    ("SPMDASH", SPMDASH, None, lambda t: "--"),
    ("SPAMP", SPAMP, None, lambda t: _AMP.sub("&", t)),
    ("SPPUNC", SPPUNC, None, _KEEP),
    ("WORD/REDAUX", WORD, REDAUX, _remove_soft_hyphens),
    ("SWORD/SREDAUX", SWORD, SREDAUX, _remove_soft_hyphens),
    ("WORD", WORD, None, _remove_soft_hyphens),
    ("APOWORD", APOWORD, None, _KEEP),
    ("APOWORD2", APOWORD2, JLETTER, _KEEP),
    ("FULLURL", FULLURL, None, _KEEP),
    ("LIKELYURL", LIKELYURL, None, _KEEP),
    ("EMAIL", EMAIL, None, _KEEP),
    ("TWITTER", TWITTER, None, _KEEP),
    ("REDAUX/", REDAUX, "[^A-Za-z]", lambda t: _latex_quotes(t, False)),
    ("SREDAUX/", SREDAUX, "[^A-Za-z]", lambda t: _latex_quotes(t, False)),
    ("DATE", DATE, None, _KEEP),
    ("NUMBER", NUMBER, None, _remove_soft_hyphens),
    ("SUBSUPNUM", SUBSUPNUM, None, _KEEP),
    ("FRAC", FRAC, None, lambda t: t.replace(" ", "\u00a0")),
    ("FRAC2", FRAC2, None, lambda t: _FRACTIONS.get(t, t)),
    ("TBSPEC", TBSPEC, None, lambda t: _AMP.sub("&", t)),
    ("THING3", THING3, None, _KEEP),
    ("DOLSIGN", DOLSIGN, None, _KEEP),
    ("DOLSIGN2", DOLSIGN2, None, _currency),
    ("ACRONYM/", ACRONYM, f"(?:{SPACENLS}){SENT_WORDS}{SPACENL}", _act_acronym),
    ("ABBREV3/", ABBREV3, f"{SPACENL}?{DIGIT}", _KEEP),
    ("pty./", "(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + r")\.", SPACE + _alts(_ci("ltd"), _ci("lim")), _KEEP),
    ("ABBREV1/SENTEND", ABBREV1, SENTEND, lambda t: (t, len(t) - 1)),
    ("ABBREV1/[^][^]", ABBREV1, r"(?s:..)", _KEEP),
    ("ABBREV1", ABBREV1, None, lambda t: (t, len(t) - 1)),
    ("ABBREV2", ABBREV2, None, _KEEP),
    ("ABBREV4/", ABBREV4, SPACE, _KEEP),
    ("ACRO/", ACRO, SPACENL, _KEEP),
    ("TBSPEC2/", TBSPEC2, SPACENL, _KEEP),
    ("FILENAME/", FILENAME, f"(?:{SPACENL}|[.?!,])", _KEEP),
    ("WORD./", WORD + r"\.", INSENTP, _remove_soft_hyphens),
    ("PHONE", PHONE, None, lambda t: _parens(t.replace(" ", "\u00a0"))),
    ("DBLQUOT/", DBLQUOT, "[A-Za-z0-9$]", lambda t: _latex_quotes(t, True)),
    ("DBLQUOT", DBLQUOT, None, lambda t: _latex_quotes(t, False)),
    ("DEL", "\x7f", None, _SKIP),
    ("LESSTHAN", "(?:<|" + _ci("&lt;") + ")", None, lambda t: "<"),
    ("GREATERTHAN", "(?:>|" + _ci("&gt;") + ")", None, lambda t: ">"),
    ("SMILEY/", SMILEY, "[^A-Za-z0-9]", _parens),
    ("ASIANSMILEY", ASIANSMILEY, None, _parens),
    ("{", r"\{", None, lambda t: "-LCB-"),
    ("}", r"\}", None, lambda t: "-RCB-"),
    ("[", r"\[", None, lambda t: "-LSB-"),
    ("]", r"\]", None, lambda t: "-RSB-"),
    ("(", r"\(", None, lambda t: "-LRB-"),
    (")", r"\)", None, lambda t: "-RRB-"),
    ("HYPHENS", r"-+", None, lambda t: "--" if 3 <= len(t) <= 4 else t),
    ("LDOTS", LDOTS, None, lambda t: "..."),
    ("FNMARKS", "(?:@+|#+|_+)", None, _KEEP),
    ("ASTS", r"(?:\*+|(?:\\\*){1,3})", None, _KEEP),
    ("INSENTP", INSENTP, None, _KEEP),
    ("?!", "[?!]+", None, _KEEP),
    ("PERIOD", "[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", None, _KEEP),
    ("=", "=", None, _KEEP),
    ("/", "/", None, _KEEP),
    ("HTHING./", HTHING + r"\.", INSENTP, _remove_soft_hyphens),
    ("HTHING", HTHING, None, _remove_soft_hyphens),
    ("THING./", THING + r"\.", INSENTP, _KEEP),
    ("THING", THING, None, _KEEP),
    ("THINGA./", THINGA + r"\.", INSENTP, lambda t: _AMP.sub("&", t)),
    ("THINGA", THINGA, None, lambda t: _AMP.sub("&", t)),
    ("'/", "'", "[A-Za-z][^ \t\n\r\u00a0]", lambda t: _latex_quotes(t, True)),
    ("REDAUX", REDAUX, None, lambda t: _latex_quotes(t, False)),
    ("SREDAUX", SREDAUX, None, lambda t: _latex_quotes(t, False)),
    ("QUOTES", QUOTES, None, lambda t: _latex_quotes(t, False)),
    ("FAKEDUCKFEET", "(?:<<|>>)", None, _KEEP),
    ("MISCSYMBOL", MISCSYMBOL, None, _KEEP),
    ("SPACES", "(?:\x00|" + SPACES + "|[\u200b\u200e\u200f\ufeff])", None, _SKIP),
    ("NEWLINE", NEWLINE, None, "newline"),
    ("&nbsp;", _ci("&nbsp;"), None, _SKIP),
    ("UNTOKENIZABLE", ".", None, _SKIP),
]


# Cheap necessary conditions for rules whose failing match is slow to find by backtracking.
_QUICK = {
    "EMAIL": "(?:" + _ci("&lt;") + r'|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}@]*+@',
    "THING3": r"[A-Za-z0-9]++(?:-[A-Za-z]++){0,2}+\\?/",
}


class PTBLexer:
    """Longest-match scanner over the rules of CoreNLP 3.4.1's PTBLexer (default PTB3 options, tokenizeNLs)."""

    NEWLINE_TOKEN = "*NL*"

    def __init__(self):
        self._rules = []
        for name, head, trail, action in _RULES:
            pattern = f"(?P<h>{head})" + (f"(?:{trail})" if trail else "")
            # The backtracking pattern decides cheaply whether the rule matches at all; the POSIX one
            # (leftmost-longest, as JFlex) is run only when it does, to get the longest match.
            quick = regex.compile(_QUICK.get(name, pattern), regex.V0)
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
        if action is _KEEP:
            return head, pos + len(head)
        if action is _SKIP:
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
# "word." is a word and a period unless it is an abbreviation or acronym (checked with the lexer's patterns).
_ABBREVIATION_DOT = regex.compile(
    _alts(ACRONYM, ABBREV3, "(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + r")\.", ABBREV1, ABBREV2), regex.V0)
# The only trailing contexts that reach past the separator after a chunk; all follow a rule ending in '.'.
_LONG_CONTEXTS = [regex.compile(f"(?:{ctx})", regex.POSIX | regex.V0) for ctx in (
    f"(?:{SPACENLS}){SENT_WORDS}{SPACENL}", f"{SPACENL}?{DIGIT}",
    SPACE + _alts(_ci("ltd"), _ci("lim")), SENTEND)]


def _surrogates(ch: str) -> str:
    code = ord(ch) - 0x10000
    return chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF))


def _from_utf16_units(token: str) -> str:
    return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_ABBREVIATION_CACHE: dict[str, bool] = {}


def _is_abbreviation(word_dot: str) -> bool:
    found = _ABBREVIATION_CACHE.get(word_dot)
    if found is None:
        found = _ABBREVIATION_CACHE[word_dot] = _ABBREVIATION_DOT.fullmatch(word_dot) is not None
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
        for context in _LONG_CONTEXTS:
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
