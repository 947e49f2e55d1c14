"""Caption metrics equal to the COCO caption toolkit (pycocoevalcap), without Java.

``tokenize`` reproduces pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 PTBTokenizer
with ``-preserveLines -lowerCase``, then its punctuation tokens removed) for caption text.
BLEU-1..4, ROUGE-L and CIDEr(-D) equal pycocoevalcap's ``Bleu(4)``, ``Rouge`` and ``Cider`` to
1e-6; METEOR goes through pycocoevalcap's own Java ``Meteor`` when it is there.
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

__all__ = ["PUNCTUATIONS", "perplexity", "per_image_scores", "score", "tokenize", "tokenize_batch"]

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
def _chunk_tokens(chunk: str) -> tuple[tuple[str, ...], bool]:
    """Lower-cased tokens of one whitespace-free chunk, punctuation tokens removed, and
    whether the chunk's last token is a one-letter abbreviation such as "a." (see _SENTEND)."""
    if _SIMPLE.fullmatch(chunk) and chunk not in _SIMPLE_SKIP:
        return (chunk,), False
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
    letter_dot = bool(out) and re.fullmatch(r"[A-Za-z]\.", out[-1]) is not None
    return tuple(t for t in (t.lower() for t in out) if t not in PUNCTUATIONS), letter_dot


# CoreNLP splits "a." into "a" "." when spaces/line breaks, then a capitalised sentence opener
# from this list (or a tag) follow; the next caption of a PTBTokenizer batch is the next line.
_OPENERS = str.split(
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last"
    " Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Then There These"
    " They This We When While What Yet You"
)
_SENTEND = re.compile(
    r"[\s\u00a0\u2000-\u200a\u3000]+(?:(?:"
    + "|".join(w[0] + "(?i:" + re.escape(w[1:]) + ")" for w in sorted(_OPENERS, key=len)[::-1])
    + r")[\s\u00a0\u2000-\u200a\u3000]|</?[A-Za-z!][^>]*>)"
)
_CHUNK = re.compile(r"[^\s\u00a0\u2000-\u200b\u200e\u200f\u3000\ufeff\x00]+")


def _tokenize_line(text: str, next_line: str | None) -> list[str]:
    if "/" in text or "\u2044" in text:
        text = _FRAC_SPACE.sub(rf"\1{_NBSP_JOIN}", text)
    if "." not in text:  # no abbreviation to split: the fast path
        chunks = text.split() if text.isascii() and "\x00" not in text else _SPACES.split(text)
        return [t for chunk in chunks if chunk for t in _chunk_tokens(chunk)[0]]
    after = text if next_line is None else text + "\n" + next_line.replace("\n", " ")
    out: list[str] = []
    for m in _CHUNK.finditer(text):
        toks, letter_dot = _chunk_tokens(m.group())
        if letter_dot and _SENTEND.match(after, m.end()):
            toks = (*toks[:-1], toks[-1][:-1])
        out.extend(toks)
    return out


def tokenize_batch(captions: Sequence[str]) -> list[list[str]]:
    """``tokenize`` of each caption, as one PTBTokenizer call over all of them gives them.

    The only difference to tokenizing one by one: a caption ending in a one-letter
    abbreviation ("plan b.") loses its period when the next caption starts with a capital.
    """
    nxt = [*captions[1:], None]
    return [_tokenize_line(c.replace("\n", " "), n) for c, n in zip(captions, nxt, strict=True)]


def tokenize(text: str) -> list[str]:
    """Tokens of a caption exactly as pycocoevalcap's PTBTokenizer gives them.

    Lower-cased, punctuation tokens dropped, contractions split ("don't" -> "do", "n't").
    The caption is taken as a PTBTokenizer batch of its own (see ``tokenize_batch``).
    """
    return _tokenize_line(text.replace("\n", " "), None)


# ---------------------------------------------------------------------------------------------
# Scores. pycocoevalcap's scorers loop over Python dicts per image and per reference; here the
# n-grams of all captions become integer ids once and every statistic is a numpy group-by.
# ---------------------------------------------------------------------------------------------

_N = 4
_SIGMA = 6.0  # CIDEr-D's Gaussian length penalty
_BETA = 1.2  # ROUGE-L's recall weight
_TINY, _SMALL = 1e-15, 1e-9  # BLEU's smoothing constants, as in pycocoevalcap's bleu_scorer


def _check(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> list[Hashable]:
    ids = list(candidates)
    if set(ids) != set(references):
        missing = set(ids) ^ set(references)
        raise ValueError(f"references and candidates must have the same ids; differ on {missing}")
    for i in ids:
        refs = references[i]
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i!r}: references must be a non-empty list of strings")
    return ids


def _group_max(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys (sorted) and the largest value of each."""
    if len(keys) == 0:
        return keys, values
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    last = np.r_[k[1:] != k[:-1], True]
    return k[last], v[last]


def _lookup(table_keys: np.ndarray, table_values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """table_values at keys (table_keys sorted, unique); 0 where a key is absent."""
    if len(table_keys) == 0:
        return np.zeros(len(keys), dtype=table_values.dtype)
    pos = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    return np.where(table_keys[pos] == keys, table_values[pos], 0)


class _Stats:
    """Per-image BLEU (1..4), ROUGE-L and CIDEr-D of tokenized captions, plus corpus BLEU."""

    def __init__(self, hyps: list[str], refs: list[list[str]]) -> None:
        n_img = len(hyps)
        n_ref = np.array([len(r) for r in refs], dtype=np.int64)
        sents = hyps + [r for rs in refs for r in rs]  # candidates first, then all references
        # sentence -> image, and the first reference sentence of each image
        self.img = np.r_[np.arange(n_img), np.repeat(np.arange(n_img), n_ref)]
        self.ref_start = n_img + np.r_[0, np.cumsum(n_ref)[:-1]]
        self.n_img, self.n_ref = n_img, n_ref
        words = [s.split() for s in sents]  # BLEU and CIDEr split like this ...
        self.lens = np.array([len(w) for w in words], dtype=np.int64)
        vocab: dict[str, int] = {}
        flat = np.array([vocab.setdefault(t, len(vocab)) for w in words for t in w], np.int64)
        sent_of_tok = np.repeat(np.arange(len(sents)), self.lens)
        end_of_tok = np.repeat(np.cumsum(self.lens), self.lens)
        self.rouge = self._rouge(sents, n_img, n_ref)  # ... and ROUGE-L like this
        self.correct = np.zeros((_N, n_img))
        self.cider = np.zeros((_N, n_img))
        base = max(len(vocab), 1)
        for n in range(1, _N + 1):
            pos = np.flatnonzero(np.arange(len(flat)) + n <= end_of_tok)
            if base**n < 2**62:  # the n-gram as one base-|vocab| integer
                code = np.zeros(len(pos), dtype=np.int64)
                for k in range(n):
                    code = code * base + flat[pos + k]
                _, gram = np.unique(code, return_inverse=True)
            else:
                cols = np.stack([flat[pos + k] for k in range(n)], axis=1)
                _, gram = np.unique(cols, axis=0, return_inverse=True)
            self._ngram_stats(n, sent_of_tok[pos], gram.reshape(-1).astype(np.int64))
        self._bleu()

    def _ngram_stats(self, n: int, sent: np.ndarray, gram: np.ndarray) -> None:
        n_img, n_sent = self.n_img, len(self.lens)
        n_gram = int(gram.max()) + 1 if len(gram) else 1
        pair, count = np.unique(sent * n_gram + gram, return_counts=True)  # (sentence, n-gram)
        p_sent, p_gram = pair // n_gram, pair % n_gram
        is_ref = p_sent >= n_img
        # BLEU: candidate counts clipped by the largest count in any one reference
        ref_key = self.img[p_sent[is_ref]] * n_gram + p_gram[is_ref]
        max_key, max_count = _group_max(ref_key, count[is_ref])
        hyp_sent, hyp_gram, hyp_count = p_sent[~is_ref], p_gram[~is_ref], count[~is_ref]
        clip = np.minimum(hyp_count, _lookup(max_key, max_count, hyp_sent * n_gram + hyp_gram))
        self.correct[n - 1] = np.bincount(hyp_sent, clip, minlength=n_img)
        # CIDEr-D: idf from the number of images whose references hold the n-gram
        df = np.bincount(max_key % n_gram, minlength=n_gram)
        weight = np.log(float(n_img)) - np.log(np.maximum(1.0, df))
        vec = count * weight[p_gram]
        norm = np.sqrt(np.bincount(p_sent, vec**2, minlength=n_sent))
        # every candidate n-gram against each reference of its image
        reps = self.n_ref[hyp_sent]
        h_sent, h_gram = np.repeat(hyp_sent, reps), np.repeat(hyp_gram, reps)
        h_vec = np.repeat(vec[~is_ref], reps)
        offset = np.arange(len(h_sent)) - np.repeat(np.cumsum(reps) - reps, reps)
        r_sent = self.ref_start[h_sent] + offset
        r_vec = _lookup(pair, vec, r_sent * n_gram + h_gram)
        num = np.bincount(r_sent, np.minimum(h_vec, r_vec) * r_vec, minlength=n_sent)[n_img:]
        num = num.astype(float)  # bincount of no weights is int
        ref_img = self.img[n_img:]
        den = norm[ref_img] * norm[n_img:]
        val = np.divide(num, den, out=num.copy(), where=den != 0)
        # pycocoevalcap's "length" counts bigrams (its n == 1 is the 2-gram index)
        blen = np.maximum(self.lens - 1, 0).astype(float)
        delta = blen[ref_img] - blen[n_img:]
        val *= np.exp(-(delta**2) / (2 * _SIGMA**2))
        self.cider[n - 1] = np.bincount(ref_img, val, minlength=n_img)

    def _bleu(self) -> None:
        n_img = self.n_img
        testlen = self.lens[:n_img]
        ref_img, ref_len = self.img[n_img:], self.lens[n_img:]
        # "closest" reference length; ties go to the shorter reference
        key = np.abs(ref_len - testlen[ref_img]) * (ref_len.max() + 1) + ref_len
        best = np.full(n_img, np.iinfo(np.int64).max)
        np.minimum.at(best, ref_img, key)
        self.reflen = best % (ref_len.max() + 1)
        self.guess = np.maximum(testlen[None, :] - np.arange(_N)[:, None], 0)

    @staticmethod
    def _rouge(sents: list[str], n_img: int, n_ref: np.ndarray) -> np.ndarray:
        hyp_tokens = [s.split(" ") for s in sents[:n_img]]
        ref_tokens = [s.split(" ") for s in sents[n_img:]]
        ref_img = np.repeat(np.arange(n_img), n_ref)
        lcs = _lcs_batch(hyp_tokens, ref_tokens, ref_img)
        prec = lcs / np.array([len(h) for h in hyp_tokens], dtype=float)[ref_img]
        rec = lcs / np.array([len(r) for r in ref_tokens], dtype=float)
        p = np.zeros(n_img)
        r = np.zeros(n_img)
        np.maximum.at(p, ref_img, prec)
        np.maximum.at(r, ref_img, rec)
        den = r + _BETA**2 * p
        f = np.divide((1 + _BETA**2) * p * r, den, out=np.zeros(n_img), where=(p > 0) & (r > 0))
        return f

    def bleu_per_image(self) -> np.ndarray:
        """(4, n_img) per-image BLEU-1..4 as pycocoevalcap's per-image lists give them."""
        frac = (self.correct + _TINY) / (self.guess + _SMALL)
        bleu = np.cumprod(frac, axis=0) ** (1.0 / np.arange(1, _N + 1))[:, None]
        ratio = (self.lens[: self.n_img] + _TINY) / (self.reflen + _SMALL)
        return bleu * np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)

    def bleu_corpus(self) -> np.ndarray:
        """Corpus BLEU-1..4 (summed clipped counts, summed closest reference lengths)."""
        frac = (self.correct.sum(1) + _TINY) / (self.guess.sum(1) + _SMALL)
        bleu = np.cumprod(frac) ** (1.0 / np.arange(1, _N + 1))
        ratio = (self.lens[: self.n_img].sum() + _TINY) / (self.reflen.sum() + _SMALL)
        return bleu * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)

    def cider_per_image(self) -> np.ndarray:
        return self.cider.mean(axis=0) / self.n_ref * 10.0


def _lcs_batch(hyps: list[list[str]], refs: list[list[str]], ref_img: np.ndarray) -> np.ndarray:
    """LCS length of each reference with its image's candidate.

    The bit-parallel recurrence of ``_lcs`` on uint64 columns, all pairs at once, for
    candidates and references up to 63 tokens; longer pairs go through ``_lcs``.
    """
    vocab: dict[str, int] = {}
    h_len = np.array([len(h) for h in hyps], dtype=np.int64)
    r_len = np.array([len(r) for r in refs], dtype=np.int64)
    out = np.zeros(len(refs), dtype=np.int64)
    short = (h_len[ref_img] <= 63) & (r_len <= 63)
    for j in np.flatnonzero(~short):
        out[j] = _lcs(hyps[ref_img[j]], refs[j])
    idx = np.flatnonzero(short)
    if len(idx) == 0:
        return out
    lh, lr = int(h_len[ref_img[idx]].max()), int(r_len[idx].max())
    hm = np.full((len(hyps), lh), -1, dtype=np.int64)
    for i, h in enumerate(hyps):
        if len(h) <= 63:
            hm[i, : len(h)] = [vocab.setdefault(t, len(vocab)) for t in h]
    rm = np.full((len(idx), lr), -2, dtype=np.int64)
    for row, j in enumerate(idx):
        rm[row, : r_len[j]] = [vocab.setdefault(t, len(vocab)) for t in refs[j]]
    bits = np.left_shift(np.uint64(1), np.arange(lh, dtype=np.uint64))
    for start in range(0, len(idx), 4096):  # bounded memory: 4096 x lr x lh booleans
        sl = slice(start, start + 4096)
        eq = rm[sl, :, None] == hm[ref_img[idx[sl]]][:, None, :]
        masks = np.bitwise_or.reduce(np.where(eq, bits, np.uint64(0)), axis=2)
        full = np.left_shift(np.uint64(1), h_len[ref_img[idx[sl]]].astype(np.uint64))
        full -= np.uint64(1)
        v = full.copy()
        for col in range(lr):
            u = v & masks[:, col]
            v = ((v + u) | (v - u)) & full
        out[idx[sl]] = h_len[ref_img[idx[sl]]] - np.bitwise_count(v)
    return out


def _lcs(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, bit-parallel (Allison-Dix / Hyyro) on Python ints.

    The bit-vector form runs one big-int step per token of ``b`` instead of len(a) * len(b)
    Python steps; no installed library computes token LCS.
    """
    masks: dict[str, int] = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _tokenized(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[list[Hashable], list[str], list[list[str]]]:
    ids = _check(references, candidates)
    # two PTBTokenizer batches, as COCOEvalCap makes them: all references, all candidates
    hyps = [" ".join(t) for t in tokenize_batch([candidates[i] for i in ids])]
    flat = iter(tokenize_batch([r for i in ids for r in references[i]]))
    refs = [[" ".join(next(flat)) for _ in references[i]] for i in ids]
    return ids, hyps, refs


_meteor_warned = False


def _warn_no_meteor(reason: str) -> None:
    global _meteor_warned
    if not _meteor_warned:
        _meteor_warned = True
        warnings.warn(f"METEOR left out: {reason}", RuntimeWarning, stacklevel=3)


def _meteor(ids: list[Hashable], hyps: list[str], refs: list[list[str]]) -> float | None:
    """pycocoevalcap's own Java METEOR 1.5 on the tokenized captions, or None (warned once)."""
    if shutil.which("java") is None:
        _warn_no_meteor("java is not installed")
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        _warn_no_meteor("pycocoevalcap is not installed (pip install 'pixtell[meteor]')")
        return None
    try:
        m = Meteor()
        try:
            value, _ = m.compute_score(
                {k: refs[j] for j, k in enumerate(ids)}, {k: [hyps[j]] for j, k in enumerate(ids)}
            )
        finally:
            del m
    except Exception as e:  # a failed Java run must not lose the other metrics
        _warn_no_meteor(f"the METEOR jar failed ({e})")
        return None
    return float(value)


def score(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    *,
    meteor: bool | None = None,
    nist: bool = False,
) -> dict[str, float]:
    """COCO caption metrics of one candidate per image against all its references.

    Returns Bleu_1..Bleu_4, ROUGE_L, CIDEr (CIDEr-D) on pycocoevalcap's 0-1 scale (CIDEr x10),
    METEOR when Java and pycocoevalcap are there (``meteor=None``) or asked for, and NIST_2 /
    NIST_4 (nltk) with ``nist=True``. Raw strings in; they are tokenized with ``tokenize``.
    """
    ids, hyps, refs = _tokenized(references, candidates)
    if not ids:
        raise ValueError("no images to score")
    st = _Stats(hyps, refs)
    out = {f"Bleu_{k + 1}": float(v) for k, v in enumerate(st.bleu_corpus())}
    if meteor is not False:
        m = _meteor(ids, hyps, refs)
        if m is not None:
            out["METEOR"] = m
    out["ROUGE_L"] = float(st.rouge.mean())
    out["CIDEr"] = float(st.cider_per_image().mean())
    if nist:
        from nltk.translate.nist_score import corpus_nist

        ref_words = [[r.split() for r in rs] for rs in refs]
        hyp_words = [h.split() for h in hyps]
        for n in (2, 4):
            # nltk divides by the candidates' length: all-empty candidates earn nothing
            empty = not any(hyp_words)
            out[f"NIST_{n}"] = 0.0 if empty else float(corpus_nist(ref_words, hyp_words, n=n))
    return out


def per_image_scores(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> dict[Hashable, dict[str, float]]:
    """Per-image Bleu_4, ROUGE_L and CIDEr, equal to pycocoevalcap's per-image lists."""
    ids, hyps, refs = _tokenized(references, candidates)
    if not ids:
        return {}
    st = _Stats(hyps, refs)
    bleu4, cider = st.bleu_per_image()[_N - 1], st.cider_per_image()
    return {
        k: {"Bleu_4": float(bleu4[j]), "ROUGE_L": float(st.rouge[j]), "CIDEr": float(cider[j])}
        for j, k in enumerate(ids)
    }


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), from a summed NLL in nats."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(nll_sum / n_tokens)


def blind_baseline(
    train_references: Mapping[Hashable, Sequence[str]],
    test_references: Mapping[Hashable, Sequence[str]],
    *,
    candidates: int = 100,
    sample: int = 300,
    seed: int = 0,
) -> float:
    """Test BLEU-4 of the best image-blind captioner: one caption for every image.

    The caption is chosen among (a seeded sample of) the training captions by its BLEU-4 on
    (a sample of) the training images, never on the test set, so the figure is what a model
    that ignores its input could honestly reach.
    """
    rng = np.random.default_rng(seed)
    train_ids = list(train_references)
    pool = [c for i in train_ids for c in train_references[i]]
    if not pool or not test_references:
        raise ValueError("the blind baseline needs training captions and test references")
    picked = [pool[j] for j in rng.choice(len(pool), min(candidates, len(pool)), replace=False)]
    chosen = [
        train_ids[j] for j in rng.choice(len(train_ids), min(sample, len(train_ids)), replace=False)
    ]
    refs = {i: train_references[i] for i in chosen}

    def bleu4(caption: str, references: Mapping[Hashable, Sequence[str]]) -> float:
        return score(references, dict.fromkeys(references, caption), meteor=False)["Bleu_4"]

    best = max(picked, key=lambda c: bleu4(c, refs))
    return bleu4(best, test_references)
