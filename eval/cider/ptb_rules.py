"""The rules of CoreNLP 3.4.1's `PTBLexer.flex` as data: its macros in Python `regex` syntax, its token actions and
its rule table, in the flex file's order (ties go to the rule written first). `ptb_tokenizer.PTBLexer` scans with
them; `ptb_tokenizer.py`'s docstring says which options of the Java tool they emulate.
"""

from __future__ import annotations

import regex

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
KEEP = None
SKIP = "skip"
RULES = [
    ("c++", _ci("c") + r"[+][+]", None, KEEP),
    ("c#", _alts(_ci("c"), _ci("f")) + "#", None, KEEP),
    ("cannot", _ci("cannot"), None, lambda t: (t[:-3], len(t) - 3)),
    ("'twas", _ci("'twas"), None, lambda t: (t[:-3], len(t) - 3)),
    ("'tis", _ci("'tis"), None, lambda t: (t[:-2], len(t) - 2)),
    ("gonna", _alts(*[_ci(w) for w in "gonna gotta lemme gimme wanna".split()]), None,
     lambda t: (t[:-2], len(t) - 2)),
    ("SGML", SGML, None, lambda t: t.replace(" ", "\u00a0")),
    ("SPMDASH", SPMDASH, None, lambda t: "--"),
    ("SPAMP", SPAMP, None, lambda t: _AMP.sub("&", t)),
    ("SPPUNC", SPPUNC, None, KEEP),
    ("WORD/REDAUX", WORD, REDAUX, _remove_soft_hyphens),
    ("SWORD/SREDAUX", SWORD, SREDAUX, _remove_soft_hyphens),
    ("WORD", WORD, None, _remove_soft_hyphens),
    ("APOWORD", APOWORD, None, KEEP),
    ("APOWORD2", APOWORD2, JLETTER, KEEP),
    ("FULLURL", FULLURL, None, KEEP),
    ("LIKELYURL", LIKELYURL, None, KEEP),
    ("EMAIL", EMAIL, None, KEEP),
    ("TWITTER", TWITTER, None, KEEP),
    ("REDAUX/", REDAUX, "[^A-Za-z]", lambda t: _latex_quotes(t, False)),
    ("SREDAUX/", SREDAUX, "[^A-Za-z]", lambda t: _latex_quotes(t, False)),
    ("DATE", DATE, None, KEEP),
    ("NUMBER", NUMBER, None, _remove_soft_hyphens),
    ("SUBSUPNUM", SUBSUPNUM, None, KEEP),
    ("FRAC", FRAC, None, lambda t: t.replace(" ", "\u00a0")),
    ("FRAC2", FRAC2, None, lambda t: _FRACTIONS.get(t, t)),
    ("TBSPEC", TBSPEC, None, lambda t: _AMP.sub("&", t)),
    ("THING3", THING3, None, KEEP),
    ("DOLSIGN", DOLSIGN, None, KEEP),
    ("DOLSIGN2", DOLSIGN2, None, _currency),
    ("ACRONYM/", ACRONYM, f"(?:{SPACENLS}){SENT_WORDS}{SPACENL}", _act_acronym),
    ("ABBREV3/", ABBREV3, f"{SPACENL}?{DIGIT}", KEEP),
    ("pty./", "(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + r")\.", SPACE + _alts(_ci("ltd"), _ci("lim")), KEEP),
    ("ABBREV1/SENTEND", ABBREV1, SENTEND, lambda t: (t, len(t) - 1)),
    ("ABBREV1/[^][^]", ABBREV1, r"(?s:..)", KEEP),
    ("ABBREV1", ABBREV1, None, lambda t: (t, len(t) - 1)),
    ("ABBREV2", ABBREV2, None, KEEP),
    ("ABBREV4/", ABBREV4, SPACE, KEEP),
    ("ACRO/", ACRO, SPACENL, KEEP),
    ("TBSPEC2/", TBSPEC2, SPACENL, KEEP),
    ("FILENAME/", FILENAME, f"(?:{SPACENL}|[.?!,])", KEEP),
    ("WORD./", WORD + r"\.", INSENTP, _remove_soft_hyphens),
    ("PHONE", PHONE, None, lambda t: _parens(t.replace(" ", "\u00a0"))),
    ("DBLQUOT/", DBLQUOT, "[A-Za-z0-9$]", lambda t: _latex_quotes(t, True)),
    ("DBLQUOT", DBLQUOT, None, lambda t: _latex_quotes(t, False)),
    ("DEL", "\x7f", None, SKIP),
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
    ("FNMARKS", "(?:@+|#+|_+)", None, KEEP),
    ("ASTS", r"(?:\*+|(?:\\\*){1,3})", None, KEEP),
    ("INSENTP", INSENTP, None, KEEP),
    ("?!", "[?!]+", None, KEEP),
    ("PERIOD", "[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", None, KEEP),
    ("=", "=", None, KEEP),
    ("/", "/", None, KEEP),
    ("HTHING./", HTHING + r"\.", INSENTP, _remove_soft_hyphens),
    ("HTHING", HTHING, None, _remove_soft_hyphens),
    ("THING./", THING + r"\.", INSENTP, KEEP),
    ("THING", THING, None, KEEP),
    ("THINGA./", THINGA + r"\.", INSENTP, lambda t: _AMP.sub("&", t)),
    ("THINGA", THINGA, None, lambda t: _AMP.sub("&", t)),
    ("'/", "'", "[A-Za-z][^ \t\n\r\u00a0]", lambda t: _latex_quotes(t, True)),
    ("REDAUX", REDAUX, None, lambda t: _latex_quotes(t, False)),
    ("SREDAUX", SREDAUX, None, lambda t: _latex_quotes(t, False)),
    ("QUOTES", QUOTES, None, lambda t: _latex_quotes(t, False)),
    ("FAKEDUCKFEET", "(?:<<|>>)", None, KEEP),
    ("MISCSYMBOL", MISCSYMBOL, None, KEEP),
    ("SPACES", "(?:\x00|" + SPACES + "|[\u200b\u200e\u200f\ufeff])", None, SKIP),
    ("NEWLINE", NEWLINE, None, "newline"),
    ("&nbsp;", _ci("&nbsp;"), None, SKIP),
    ("UNTOKENIZABLE", ".", None, SKIP),
]


# Cheap necessary conditions for rules whose failing match is slow to find by backtracking.
QUICK = {
    "EMAIL": "(?:" + _ci("&lt;") + r'|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}@]*+@',
    "THING3": r"[A-Za-z0-9]++(?:-[A-Za-z]++){0,2}+\\?/",
}

# "word." is a word and a period unless it is an abbreviation or acronym (checked with the rules' own patterns).
ABBREVIATION_DOT = regex.compile(
    _alts(ACRONYM, ABBREV3, "(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + r")\.", ABBREV1, ABBREV2), regex.V0)
# The only trailing contexts that reach past the separator after a chunk; all follow a rule ending in '.'.
LONG_CONTEXTS = [regex.compile(f"(?:{ctx})", regex.POSIX | regex.V0) for ctx in (
    f"(?:{SPACENLS}){SENT_WORDS}{SPACENL}", f"{SPACENL}?{DIGIT}",
    SPACE + _alts(_ci("ltd"), _ci("lim")), SENTEND)]

