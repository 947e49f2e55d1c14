"""Caption metrics equal to the COCO caption toolkit (pycocoevalcap), without Java.

``tokenize`` reproduces pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 PTBTokenizer
with ``-preserveLines -lowerCase``, then its punctuation tokens removed) for caption text.
BLEU-1..4, ROUGE-L and CIDEr(-D) equal pycocoevalcap's ``Bleu(4)``, ``Rouge`` and ``Cider`` to
1e-6; METEOR goes through pycocoevalcap's own Java ``Meteor`` when it is there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

__all__ = ["PUNCTUATIONS", "tokenize"]

# pycocoevalcap removes these tokens after CoreNLP. It compares the *lower-cased* tokens, so
# "-LRB-" never matches "-lrb-" and bracket tokens survive; we keep that quirk.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-"]
    + [".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# ---------------------------------------------------------------------------------------------
# A longest-match scanner over the subset of CoreNLP's PTBLexer (a JFlex grammar) that caption
# text exercises. No Python library reproduces that lexer (nltk's Treebank tokenizer differs on
# quotes, brackets, abbreviations, "gonna", ...), so the rules are transcribed here, in the
# lexer's priority order. Like JFlex, the longest match wins (trailing context counts toward
# the length) and ties go to the earlier rule.
# ---------------------------------------------------------------------------------------------

_L = r"[^\W\d_\u00b2\u00b3\u00b9\u00bc-\u00be\u2150-\u218f\u2070-\u209f]"  # a letter
_LD = r"[^\W_\u00b2\u00b3\u00b9\u00bc-\u00be\u2150-\u218f\u2070-\u209f]"  # letter or digit
_W = rf"(?:{_L}|[\u00ad\u0300-\u036f])+"  # WORD: letters, soft hyphens, combining marks
_APOS = r"['\u0092\u2019]"
_APOSETC = r"['\u0092\u2019\u0091\u2018\u201b]"
_REDAUX = rf"{_APOS}(?i:[msd]|re|ve|ll)"
_SPACE = r"[ \t\u00a0\u2000-\u200a\u3000]"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
_ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
_ABSTATE = (
    "Ala|Ariz|Ark|Calif|Colo|Conn|Dak|Del|Fla|Ga|Ill|Ind|Kans?|Ky|La|Mass|Md|Mich|Minn|Miss|Mo"
    "|Mont|Neb|Nev|Okla|Ore|Pa|Penn|Tenn|Tex|Va|Vt|Wash|Wisc?|Wyo"
)
_ABCOMP = "Inc|Cos?|Corp|Pp?tys?|Ltd|Plc|Bancorp|Dept|Bhd|Assn|Univ|Intl|Sys"
_ABCOMP2 = "Invt|Elec|Natl|M[ft]g"
_ABNUM = "Nos?|Prop|Ph|tel|est|ext|sq|ft"
_ABPTIT = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
_ABTITLE = (
    "Mr|Mrs|Ms|Miss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl"
    "|Pvt|Mt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det"
)
_ABBREV1 = rf"(?i:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq)\."
_ABBREV4 = [r"[A-Za-z]", rf"(?i:{_ABTITLE}|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|{_ABCOMP2})", _ACRO]
_THING_PART = rf"(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+"
_THING = rf"{_THING_PART}(?:[-_\u058a\u2010\u2011]{_THING_PART})*"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{_ACRO}\.|[A-Za-z0-9\u00ad]+))+"
_MISC = (
    "[\u00a6-\u00a9\u00ac\u00ae-\u00ba\u00d7\u00f7\u0387\u2020-\u2023\u2032-\u2038\u2044"
    "\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u23ff\u2600-\u26ff\u3012\u30fb]"
)
_FRAC2 = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u00a4": "$", "\u0080": "$", "\u20a0": "$"}
_CURRENCY["\u20ac"] = "$"
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_NBSP_JOIN = "\ue000"  # stands for the space inside "1 1/2" while lines are split at spaces


def _close_quotes(tok: str) -> list[str]:
    """CoreNLP's latexQuotes for a quote not judged to open: ASCII/curly quotes to PTB ones."""
    tok = tok.replace('"', "''")
    tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
    tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
    return [re.sub("[\u0094\u201d\u00bb]", "''", tok)]


def _keep(tok: str) -> list[str]:
    return [tok.replace("\u00ad", "")]


def _split_at(i: int) -> Callable[[str], list[str]]:
    return lambda tok: [tok[:i], tok[i:]]


def _assimilation(tok: str) -> list[str]:
    low = tok.lower()
    cut = 3 if low == "cannot" else 4 if low.startswith("more") else len(tok) - 2
    return [tok[:cut], tok[cut:]]


def _hyphens(tok: str) -> list[str]:
    return ["--" if 3 <= len(tok) <= 4 else tok]


def _const(out: str) -> Callable[[str], list[str]]:
    return lambda tok: [out]


# (main pattern, trailing context or None, action); the context is matched but not consumed.
_RuleSpec = tuple[str, str | None, Callable[[str], list[str]]]
_RULES: list[_RuleSpec] = [
    (r"(?i:cannot|gimme|gonna|gotta|lemme|wanna|more['\u2019]n)", "[^A-Za-z]", _assimilation),
    (r"(?i:['\u2019]t(?:is|was))", "[^A-Za-z]", _split_at(2)),
    (r"</?[A-Za-z!][^>\s]*>", None, _keep),
    (r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013-\u2015]", None, _const("--")),
    (r"&amp;", None, _const("&")),
    (r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", None, _keep),
    (_W, _REDAUX, _keep),
    (r"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*", rf"[nN]{_APOSETC}[tT]", _keep),
    (_W, None, _keep),
    (rf"{_APOS}[nN]{_APOS}?", None, _keep),
    (rf"[lLdDjJ]{_APOS}|Dunkin{_APOS}|somethin{_APOS}|ol{_APOS}|{_APOS}em", None, _keep),
    (rf"[A-HJ-XZn]{_APOSETC}{_L}{{2,}}", None, _keep),
    (rf"{_APOS}[2-9]0[sS]|{_APOS}till?|{_APOS}cause", None, _keep),
    (rf"{_L}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_L}*", None, _keep),
    (r"cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l", None, _keep),
    (rf"[yY]{_APOS}", _L, _keep),
    (r"https?://[^\s\"<>|()]*[^\s\"<>|.!?(){},-]", None, _keep),
    (_REDAUX, "[^A-Za-z]", _close_quotes),
    (rf"[nN]{_APOSETC}[tT]", None, _close_quotes),
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", None, _keep),
    (r"[-+]?(?:\d*(?:[.:,\u00ad\u066b\u066c]\d+)+|\d+)", None, _keep),
    (
        rf"(?:\d{{1,4}}[-{_NBSP_JOIN}])?\d{{1,4}}(?:\\?/|\u2044)\d{{1,4}}",
        None,
        lambda t: [t.replace(_NBSP_JOIN, "\u00a0")],
    ),
    ("[" + "".join(_FRAC2) + "]", None, lambda t: [_FRAC2[t]]),
    (r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)(?:P-500|Ls)", None, _keep),
    (rf"Cap{_APOS}n|c{_APOS}est", None, _keep),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, _keep),
    (r"[A-Z]*\$|#", None, _keep),
    ("[" + "".join(_CURRENCY) + "\u00a5]", None, lambda t: [_CURRENCY.get(t, t)]),
    (_ABBREV1, None, _keep),
    *((rf"(?:{a})\.", None, _keep) for a in _ABBREV4),
    *((a, _SPACE, _keep) for a in _ABBREV4),
    (_ACRO, r"\s", _keep),
    (rf"{_APOS}[0-9][0-9]", r"\s", _keep),
    (rf"{_W}\.", "[,;:]", _keep),
    (
        r"(?:\(\d{3}\)|\d{3}[-.])\d{3}[-.]\d{4}",
        None,
        lambda t: [t.replace("(", "-LRB-").replace(")", "-RRB-")],
    ),
    (r'"', "[A-Za-z0-9$]", _const("``")),
    (r'"', None, _const("''")),
    (r"[-+%&\u2030\u2031~^|\\<>=/]", None, _keep),
    (r"[()\[\]{}]", None, lambda t: [_BRACKETS[t]]),
    (r"-+", None, _hyphens),
    (r"\.{3,5}|[\u0085\u2026]", None, _const("...")),
    (rf"#{_L}+|@[A-Za-z_][A-Za-z_0-9]*", None, _keep),  # hashtags and @names
    (
        r'[A-Za-z0-9][^\s"<>|(){}]*@(?:[^\s"<>|(){}.]+\.)*[^\s"<>|(){}\[\].,;:]+',
        None,
        _keep,
    ),  # e-mail-like
    (rf"{_L}+(?:\.{_L}+)+", None, _keep),  # "dog.the", "google.com": a missing space stays
    (
        r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]](?![A-Za-z])",
        None,
        lambda t: [t.replace("(", "-LRB-").replace(")", "-RRB-")],
    ),  # smileys
    (r"<<|>>", None, _keep),
    (r"@+|#+|_+|\*+", None, _keep),
    (r"[,;:]|[?!]+|[.\u00a1\u00bf\u037e\u0589]", None, _keep),
    (rf"{_HTHING}\.", "[,;:]", _keep),
    (_HTHING, None, _keep),
    (rf"{_THING}\.", "[,;:]", _keep),
    (_THING, None, _keep),
    (r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+", None, lambda t: [t.replace("&amp;", "&")]),
    (r"'", r"[A-Za-z][^ \t\n\r\u00a0]", _const("`")),
    (_REDAUX, None, _close_quotes),
    (
        "[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091-\u0094\u201e\u201f\u2039\u203a"
        "\u00ab\u00bb]{1,2}",
        None,
        _close_quotes,
    ),
    (_APOS + "|''", None, _close_quotes),
    (_MISC, None, _keep),
]
_COMPILED = [
    (re.compile(main if ctx is None else f"({main})(?:{ctx})"), ctx is not None, action)
    for main, ctx, action in _RULES
]
# Whitespace between tokens; CoreNLP also drops zero-width and byte-order marks. Line breaks
# inside a caption are spaces too (pycocoevalcap's line alignment would break on them).
_SPACES = re.compile(r"[\s\u00a0\u2000-\u200b\u200e\u200f\u3000\ufeff\x00]+")
_FRAC_SPACE = re.compile(r"(?<!\d)(\d{1,4})[ \u00a0](?=\d{1,4}(?:\\?/|\u2044)\d{1,4})")
_SIMPLE = re.compile(r"[a-z]+")
_SIMPLE_SKIP = frozenset(["cannot", "gimme", "gonna", "gotta", "lemme", "wanna"])


@functools.lru_cache(maxsize=1 << 17)
def _chunk_tokens(chunk: str) -> tuple[str, ...]:
    """Lower-cased tokens of one whitespace-free chunk, punctuation tokens removed."""
    if _SIMPLE.fullmatch(chunk) and chunk not in _SIMPLE_SKIP:
        return (chunk,)
    text = chunk + " "  # what follows a chunk is a space (or the line end): trailing context
    out: list[str] = []
    pos, end = 0, len(chunk)
    while pos < end:
        best_len, best = 0, None
        for rx, has_ctx, action in _COMPILED:
            m = rx.match(text, pos)
            if m is not None and m.end() - pos > best_len:
                best_len, best = m.end() - pos, (m, has_ctx, action)
        if best is None:  # untokenizable character: CoreNLP deletes it
            pos += 1
            continue
        m, has_ctx, action = best
        tok = m.group(1) if has_ctx else m.group(0)
        out.extend(action(tok))
        pos += len(tok)
    return tuple(t for t in (t.lower() for t in out) if t not in PUNCTUATIONS)


def tokenize(text: str) -> list[str]:
    """Tokens of a caption exactly as pycocoevalcap's PTBTokenizer gives them.

    Lower-cased, punctuation tokens dropped, contractions split ("don't" -> "do", "n't").
    """
    text = _FRAC_SPACE.sub(rf"\1{_NBSP_JOIN}", text)
    return [t for chunk in _SPACES.split(text) if chunk for t in _chunk_tokens(chunk)]
