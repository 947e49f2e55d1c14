"""Classifier-guided captions and the hallucination filter (the one module joining two tasks).

The classifier's top label steers the caption in two ways:

* *guided decoding*: pixtell's captioners force the label (or one of its synonyms, singular
  or plural) into the caption with constrained beam search; BLIP starts its caption with the
  prefix "a photo of a {label}";
* *the filter* (:func:`filter_caption`): when the classifier is sure (p ≥ τ) and the plain
  caption does not name the predicted class, take the best n-best caption that does, else
  the guided caption, else a template; when the classifier is unsure, keep the caption.

Every decision is written, with its reason, one JSON object per image to ``decisions.jsonl``.
:func:`evaluate_guided` measures what the filter does on a captioning run's held-out split:
caption scores, CHAIR and the label-mention rate before and after, per class beside the
classifier's accuracy.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pixtell.caption.data import load_captions, read_split
from pixtell.caption.decoding import beam_search
from pixtell.caption.predict import Captioner
from pixtell.caption.train import SPLIT_FILE
from pixtell.classify.predictor import Classifier
from pixtell.data.demo import meta_path, objects_path
from pixtell.data.folders import list_images
from pixtell.metrics.caption import score
from pixtell.metrics.hallucination import (
    Synonyms,
    chair,
    load_synonyms,
    mentions,
    phrase_forms,
    truth_from_boxes,
)
from pixtell.report import Section, plt, write_report
from pixtell.runs import Run

TEMPLATE = "a photo of a {label}"
BLIP_PREFIX = "a photo of a {label}"
DECISIONS_FILE = "decisions.jsonl"
# Why the filter chose the caption it did.
REASONS: dict[str, str] = {
    "unsure": "classifier below tau: the caption is kept",
    "agrees": "the caption names the predicted class: kept",
    "n_best": "replaced by the best n-best caption naming the predicted class",
    "guided": "replaced by the guided caption",
    "template": "replaced by the template caption",
}


@dataclass
class Decision:
    """The filter's choice for one image and why (``reason``, a key of ``REASONS``)."""

    caption: str
    reason: str
    original: str
    label: str
    probability: float
    named: list[str]  # the classes the original caption names


def _display(label: str) -> str:
    return label.replace("_", " ")


def filter_caption(
    label: str,
    probability: float,
    n_best: Sequence[str],
    *,
    vocabulary: Iterable[str],
    tau: float = 0.5,
    guided: str | None = None,
    synonyms: Synonyms | None = None,
    template: str = TEMPLATE,
) -> Decision:
    """Keep or replace ``n_best[0]`` given the classifier's top ``label`` and ``probability``.

    A caption that names the predicted class is kept even when it names others too (scenes
    hold several objects); one that names only other classes, or none, is replaced when
    ``probability >= tau``: by the best n-best caption naming the class, else ``guided``
    when it names the class, else ``template`` filled with the label.
    """
    if not n_best:
        raise ValueError("the filter needs at least one caption")
    vocab = list(vocabulary)
    original = n_best[0]
    named = sorted(mentions(original, vocab, synonyms))
    base = {"original": original, "label": label, "probability": probability, "named": named}
    if probability < tau:
        return Decision(original, "unsure", **base)
    if label in named:
        return Decision(original, "agrees", **base)
    for alt in n_best[1:]:
        if label in mentions(alt, vocab, synonyms):
            return Decision(alt, "n_best", **base)
    if guided and label in mentions(guided, vocab, synonyms):
        return Decision(guided, "guided", **base)
    return Decision(template.format(label=_display(label)), "template", **base)


@dataclass
class GuidedCaption:
    """One image: the classifier's label, the plain n-best and guided captions, the filter's
    choice (``caption``, ``reason``), or ``error`` when the image could not be read."""

    path: Path
    caption: str = ""
    reason: str = ""
    label: str | None = None
    probability: float = 0.0
    original: str = ""
    n_best: list[str] = field(default_factory=list)
    guided: str | None = None
    named: list[str] = field(default_factory=list)
    error: str | None = None

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# --------------------------------------------------------------------------- caption sources


def label_constraints(label: str, vocab: Any, synonyms: Synonyms | None = None) -> list[list[int]]:
    """Token-id sequences any one of which the guided caption must contain: the label and its
    synonyms, singular and plural, those whose words the captioner's vocabulary knows."""
    phrases = [_display(label), *(synonyms or {}).get(label, ())]
    seqs = {seq for p in phrases for seq in phrase_forms(p)}
    return sorted([vocab.stoi[w] for w in seq] for seq in seqs if all(w in vocab.stoi for w in seq))


class _PixtellSource:
    """n-best lists by beam search and guided captions by constrained beam search."""

    def __init__(self, cap: Captioner, beam_size: int, n_best: int, synonyms: Synonyms | None):
        self.cap, self.beam, self.n_best, self.synonyms = cap, beam_size, n_best, synonyms
        # the constrained decoding lives in caption/decoding.py; older builds lack it
        self.can_guide = "constraints" in inspect.signature(cap.decode).parameters

    def captions(
        self, paths: Sequence[Path], labels: Sequence[str | None], batch_size: int
    ) -> Iterator[tuple[int, tuple[list[str], str | None] | str]]:
        cap = self.cap
        for good, inputs, failed in cap.iter_batches(paths, batch_size):
            got: dict[int, tuple[list[str], str | None]] = {}
            if inputs is not None:
                feats = cap.encode(inputs)
                hyps = beam_search(
                    cap.model, feats, beam_size=self.beam, max_len=cap.max_len, n_best=self.n_best
                )
                guided = self._guided(feats, [labels[i] for i in good])
                for row, i in enumerate(good):
                    texts = [cap.vocab.decode(h.tokens) for h in hyps[row]]
                    got[i] = (texts, guided[row])
            for i in sorted([*good, *failed]):
                yield i, failed[i] if i in failed else got[i]

    def _guided(self, feats: Any, labels: Sequence[str | None]) -> list[str | None]:
        out: list[str | None] = [None] * len(labels)
        if not self.can_guide:
            return out
        rows, constraints = [], []
        for r, lab in enumerate(labels):
            seqs = label_constraints(lab, self.cap.vocab, self.synonyms) if lab else []
            if seqs:  # a label the vocabulary cannot spell gets no guided caption
                rows.append(r)
                constraints.append(seqs)
        if rows:
            decoded = self.cap.decode(feats[rows], beam_size=self.beam, constraints=constraints)
            for r, d in zip(rows, decoded, strict=True):
                out[r] = self.cap.vocab.decode(d.hypothesis.tokens)
        return out


def _texts(item: Any) -> list[str] | str:
    """A BLIP result for one image as its n-best texts, or its error as a string."""
    if isinstance(item, str):
        return [item]
    if isinstance(item, list | tuple):
        return [str(t) for t in item]
    if getattr(item, "error", None):
        return str(item.error)
    for attr in ("captions", "n_best"):
        if getattr(item, attr, None):
            return [str(t) for t in getattr(item, attr)]
    return [str(item.caption)]


class _BlipSource:
    """BLIP's n-best lists, and its captions started with "a photo of a {label}"."""

    def __init__(self, blip: Any, beam_size: int, n_best: int, max_len: int) -> None:
        self.blip, self.beam, self.n_best, self.max_len = blip, beam_size, n_best, max_len

    def _run(self, paths: Sequence[Path], batch_size: int, **kw: Any) -> list[list[str] | str]:
        kw = dict(beam_size=self.beam, max_len=self.max_len, batch_size=batch_size, **kw)
        return [_texts(r) for r in self.blip.caption(list(paths), **kw)]

    def captions(
        self, paths: Sequence[Path], labels: Sequence[str | None], batch_size: int
    ) -> Iterator[tuple[int, tuple[list[str], str | None] | str]]:
        plain = self._run(paths, batch_size, n_best=self.n_best)
        guided: dict[int, str] = {}
        for lab in {lab for lab in labels if lab}:
            idx = [i for i, x in enumerate(labels) if x == lab and not isinstance(plain[i], str)]
            if not idx:
                continue
            prefix = BLIP_PREFIX.format(label=_display(lab))
            res = self._run([paths[i] for i in idx], batch_size, prefix=prefix, n_best=1)
            guided.update(
                {i: r[0] for i, r in zip(idx, res, strict=True) if r and not isinstance(r, str)}
            )
        for i, got in enumerate(plain):
            yield i, got if isinstance(got, str) else (got, guided.get(i))


def _source(
    captioner: Any, beam_size: int, n_best: int, synonyms: Synonyms | None, max_len: int
) -> Any:
    if isinstance(captioner, Captioner):
        return _PixtellSource(captioner, beam_size, n_best, synonyms)
    if isinstance(captioner, str | Path | Run):
        try:  # a fine-tuned BLIP run (caption/blip.py, when installed in this build)
            from pixtell.caption.blip import BlipCaptioner, is_blip_run
        except ImportError:
            is_blip_run = None
        if is_blip_run is not None and is_blip_run(captioner):
            return _BlipSource(BlipCaptioner.from_run(captioner), beam_size, n_best, max_len)
        return _PixtellSource(Captioner.from_run(captioner), beam_size, n_best, synonyms)
    if hasattr(captioner, "caption"):  # pixtell.caption.blip.BlipCaptioner
        return _BlipSource(captioner, beam_size, n_best, max_len)
    raise TypeError(f"not a captioner: {captioner!r}")


def _synonyms(synonyms: Synonyms | str | Path | None) -> Synonyms | None:
    return load_synonyms(synonyms) if isinstance(synonyms, str | Path) else synonyms


def _classifier(run: Any) -> Classifier:
    return run if isinstance(run, Classifier) else Classifier.from_run(run)


def _free_path(path: Path) -> Path:
    """``path``, or ``stem-N.suffix`` when taken: an existing file is never overwritten."""
    n, out = 1, path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return out


def write_decisions(path: Path, results: Sequence[GuidedCaption]) -> Path:
    """One JSON object per image (see ``GuidedCaption``); a free name next to an existing one."""
    path = _free_path(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r.record(), ensure_ascii=False) for r in results]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _check(tau: float, beam_size: int, n_best: int) -> None:
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"--tau must be between 0 and 1 (got {tau})")
    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1 (got {beam_size})")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"--n-best must be between 1 and the beam size {beam_size} (got {n_best})")


def _guide(
    paths: Sequence[Path],
    captioner: Any,
    clf: Classifier,
    *,
    tau: float,
    beam_size: int,
    n_best: int,
    synonyms: Synonyms | None,
    template: str,
    batch_size: int,
    max_len: int,
) -> list[GuidedCaption]:
    results = [GuidedCaption(Path(p)) for p in paths]
    labels: list[str | None] = [None] * len(paths)
    for i, p in clf.iter_probs(paths, batch_size=batch_size):
        if isinstance(p, str):
            results[i].error = p
            continue
        k = int(p.argmax())
        labels[i] = clf.classes[k]
        results[i].label, results[i].probability = clf.classes[k], float(p[k])
    source = _source(captioner, beam_size, n_best, synonyms, max_len)
    todo = [i for i, r in enumerate(results) if r.error is None]
    sub_paths, sub_labels = [paths[i] for i in todo], [labels[i] for i in todo]
    for j, got in source.captions(sub_paths, sub_labels, batch_size):
        r = results[todo[j]]
        if isinstance(got, str):
            r.error = got
            continue
        r.n_best, r.guided = got
        if not r.n_best:
            r.error = "the captioner returned no caption"
            continue
        d = filter_caption(
            r.label or "",
            r.probability,
            r.n_best,
            vocabulary=clf.classes,
            tau=tau,
            guided=r.guided,
            synonyms=synonyms,
            template=template,
        )
        r.caption, r.reason, r.original, r.named = d.caption, d.reason, d.original, d.named
    return results


def guided_captions(
    images: str | Path | Sequence[str | Path],
    captioner: Any,
    classifier_run: Any,
    *,
    tau: float = 0.5,
    beam_size: int = 5,
    n_best: int = 3,
    synonyms: Synonyms | str | Path | None = None,
    out: str | Path | None = None,
    template: str = TEMPLATE,
    batch_size: int = 32,
    recursive: bool = False,
    max_len: int = 30,
) -> list[GuidedCaption]:
    """Caption images (files or folders) guided by a classifier, through the filter.

    ``captioner``: a captioning run (or a loaded ``Captioner``) or a BLIP captioner (any
    object with BLIP's ``caption(paths, beam_size=, max_len=, prefix=, n_best=,
    batch_size=)``); ``classifier_run``: a classification run or ``Classifier``;
    ``synonyms``: a mapping or a YAML file. Unreadable files carry ``error``. Decisions go to
    ``out/decisions.jsonl`` (default: the classifier run's ``guided/`` folder), beside, never
    over, an existing file.
    """
    _check(tau, beam_size, n_best)
    syn = _synonyms(synonyms)
    clf = _classifier(classifier_run)
    listing = list_images(
        [images] if isinstance(images, str | Path) else list(images), recursive=recursive
    )
    paths = listing.paths + listing.missing
    results = _guide(
        paths,
        captioner,
        clf,
        tau=tau,
        beam_size=beam_size,
        n_best=n_best,
        synonyms=syn,
        template=template,
        batch_size=batch_size,
        max_len=max_len,
    )
    if out is None:
        if isinstance(classifier_run, Classifier):
            raise ValueError("pass out= for the decisions when the classifier is not a run")
        out = Run.load(classifier_run).dir / "guided"
    write_decisions(Path(out) / DECISIONS_FILE, results)
    return results


# --------------------------------------------------------------------------- evaluation


@dataclass
class GuidedEvalResult:
    """Where an evaluation of the filter wrote its files, and its metrics."""

    dir: Path
    metrics: dict[str, Any]
    report: Path
    decisions: Path


def load_truth(path: str | Path) -> dict[str, set[str]]:
    """Ground-truth classes per image file, keyed by the path a dataset gives it: a pixtell
    demo metadata file (``*-meta.jsonl``: its objects' shapes), a COCO instances JSON (box
    labels) or a JSON object ``{image: [class, ...]}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {path} not found")
    try:
        if path.suffix == ".jsonl":
            recs = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
            return {r["file"]: {o["shape"] for o in r["objects"]} for r in recs}
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict) and "annotations" in data:
            names = {c["id"]: c["name"] for c in data["categories"]}
            files = {im["id"]: im["file_name"] for im in data["images"]}
            boxes: dict[str, list[str]] = {f: [] for f in files.values()}
            for a in data["annotations"]:
                boxes[files[a["image_id"]]].append(names[a["category_id"]])
            return truth_from_boxes(boxes)
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return {str(k): {str(c) for c in v} for k, v in data.items()}
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read ground-truth objects from {path} ({exc})") from None
    raise ValueError(
        f"{path}: expected a demo *-meta.jsonl, a COCO instances JSON or {{image: [classes]}}"
    )


def _image_truth(
    paths: Sequence[Path], root: Path, table: Mapping[str, set[str]] | None, classes: Sequence[str]
) -> list[tuple[set[str], str | None]]:
    """(classes present, the image's one label or None) per image. Without a table, the class
    folder an image sits in is its truth."""
    out: list[tuple[set[str], str | None]] = []
    for p in paths:
        if table is not None:
            rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
            present = table.get(rel, table.get(p.name))
            if present is None:
                raise ValueError(f"the ground-truth file lists no objects for {rel}")
        elif p.parent.name in classes:
            present = {p.parent.name}
        else:
            raise ValueError(
                f"no ground truth for {p}: it is not in a class folder; pass --truth FILE"
            )
        label = p.parent.name if p.parent.name in present else None
        if label is None and len(present) == 1:
            label = next(iter(present))
        out.append((set(present), label))
    return out


def _scores(
    refs: Mapping[int, list[str]],
    caps: Mapping[int, str],
    truth: Mapping[int, set[str]],
    labels: Mapping[int, str],
    vocab: Sequence[str],
    synonyms: Synonyms | None,
    meteor: bool | None,
) -> dict[str, Any]:
    out: dict[str, Any] = dict(score(refs, caps, meteor=meteor))
    out.update(chair(caps, truth, vocab, synonyms).as_dict())
    named = [k for k in labels if k in caps]
    out["mention_rate"] = (
        sum(labels[k] in mentions(caps[k], vocab, synonyms) for k in named) / len(named)
        if named
        else float("nan")
    )
    return out


def _per_class(
    results: Sequence[GuidedCaption],
    refs: Mapping[int, list[str]],
    labels: Mapping[int, str],
    vocab: Sequence[str],
    synonyms: Synonyms | None,
) -> list[dict[str, Any]]:
    rows = []
    for cls in vocab:
        ids = [k for k, lab in labels.items() if lab == cls]
        if not ids:
            continue
        row: dict[str, Any] = {"class": cls, "images": len(ids)}
        row["classifier_accuracy"] = sum(results[k].label == cls for k in ids) / len(ids)
        for tag, attr in (("before", "original"), ("after", "caption")):
            caps = {k: getattr(results[k], attr) for k in ids}
            row[f"bleu4_{tag}"] = score({k: refs[k] for k in ids}, caps, meteor=False)["Bleu_4"]
            row[f"mention_{tag}"] = sum(
                cls in mentions(c, vocab, synonyms) for c in caps.values()
            ) / len(ids)
        rows.append(row)
    return rows


def plot_per_class(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """Classifier accuracy against caption BLEU-4 per class, before (○) and after (▲) the
    filter; colour is the label-mention rate."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x = [r["classifier_accuracy"] for r in rows]
    sc = None
    for tag, marker in (("before", "o"), ("after", "^")):
        y = [r[f"bleu4_{tag}"] for r in rows]
        c = [r[f"mention_{tag}"] for r in rows]
        sc = ax.scatter(x, y, c=c, cmap="viridis", vmin=0, vmax=1, marker=marker, s=60,
                        edgecolors="k", label=f"{tag} the filter")  # fmt: skip
    for r in rows:
        ax.annotate(r["class"], (r["classifier_accuracy"], r["bleu4_after"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="label-mention rate")
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("classifier accuracy")
    ax.set_ylabel("caption BLEU-4")
    ax.set_title("Per class: classifier accuracy vs caption BLEU-4")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


_SHOWN = [
    ("Bleu_4", "BLEU-4"),
    ("CIDEr", "CIDEr-D"),
    ("ROUGE_L", "ROUGE-L"),
    ("METEOR", "METEOR"),
    ("CHAIR_i", "CHAIR_i"),
    ("CHAIR_s", "CHAIR_s"),
    ("mention_rate", "label-mention rate"),
]


def guided_sections(
    metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: Path, *links: Path
) -> list[Section]:
    """The report's sections: before/after table, the filter's decisions, the per-class
    table with its scatter plot. Other reports (the demo's) can include them."""
    cols = [c for c in ("before", "guided", "after") if c in metrics]
    table = [["metric", *(f"{c} the filter" if c != "guided" else "guided" for c in cols)]]
    table += [
        [name, *(metrics[c][key] for c in cols)]
        for key, name in _SHOWN
        if all(key in metrics[c] for c in cols)
    ]
    reasons = metrics["reasons"]
    decisions = [["reason", "images", "meaning"]] + [
        [k, reasons.get(k, 0), REASONS[k]] for k in REASONS
    ]
    per = [["class", "images", "classifier accuracy", "BLEU-4 before", "BLEU-4 after",
            "mention rate before", "mention rate after"]]  # fmt: skip
    per += [
        [
            r["class"],
            r["images"],
            r["classifier_accuracy"],
            r["bleu4_before"],
            r["bleu4_after"],
            r["mention_before"],
            r["mention_after"],
        ]  # fmt: skip
        for r in rows
    ]
    plot = plot_per_class(rows, out_dir / "per_class.png") if rows else None
    return [
        Section(
            "Before and after the hallucination filter",
            rows=table,
            text=f"tau {metrics['tau']}, beam {metrics['beam_size']}, n-best {metrics['n_best']}"
            f", {metrics['n']} images; classifier accuracy {metrics['classifier_accuracy']:.4f}."
            " CHAIR (Rohrbach et al. 2018) against the classes present in each image.",
        ),
        Section("Filter decisions", rows=decisions, links=list(links)),
        Section("Per class", rows=per, images=[plot] if plot else []),
    ]


def evaluate_guided(
    caption_run: str | Path | Run,
    classifier_run: str | Path | Run,
    *,
    split: str = "test",
    tau: float = 0.5,
    beam_size: int = 3,
    n_best: int = 3,
    synonyms: Synonyms | str | Path | None = None,
    truth: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    meteor: bool | None = False,
    template: str = TEMPLATE,
) -> GuidedEvalResult:
    """The filter measured on ``split`` of a captioning run: BLEU/CIDEr, CHAIR_i/CHAIR_s and
    the label-mention rate of the plain, guided and filtered captions, per-class table.

    Ground-truth objects come from ``truth`` (see :func:`load_truth`), else from the demo
    metadata the run was trained on, else from class folders. Writes ``metrics.json``,
    ``decisions.jsonl``, ``per_class.csv``, ``per_class.png`` and ``report.html`` into ``out``
    (default ``CAPTION_RUN/guided``).
    """
    _check(tau, beam_size, n_best)
    run = Run.load(caption_run)
    syn = _synonyms(synonyms)
    clf = _classifier(classifier_run)
    cfg = run.config
    ds = load_captions(
        cfg["data"], format=cfg.get("format"), images=cfg.get("images"), check_images=False,
        progress=False,
    )  # fmt: skip
    splits = read_split(run.dir / SPLIT_FILE, ds)
    if not splits.get(split):
        raise ValueError(f"{run.dir} has no images in a {split!r} split")
    images = [ds.images[i] for i in splits[split]]
    data = Path(cfg["data"])
    if truth is None and ds.format == "demo":
        truth = data if data.is_file() else meta_path(data)
    elif truth is None and objects_path(data).is_file():  # demo scenes, Flickr8k layout
        truth = objects_path(data)
    table = load_truth(truth) if truth is not None else None
    paths = [im.path for im in images]
    gt = _image_truth(paths, ds.root, table, clf.classes)
    results = _guide(
        paths, run, clf, tau=tau, beam_size=beam_size, n_best=n_best,
        synonyms=syn, template=template, batch_size=batch_size, max_len=30,
    )  # fmt: skip
    ok = [k for k, r in enumerate(results) if r.error is None]
    if not ok:
        raise ValueError(f"no readable image in the {split} split of {run.dir}")
    refs = {k: images[k].captions for k in ok}
    present = {k: gt[k][0] for k in ok}
    labels = {k: lab for k in ok if (lab := gt[k][1]) is not None}
    vocab = clf.classes
    metrics: dict[str, Any] = {
        "before": _scores(refs, {k: results[k].original for k in ok}, present, labels, vocab,
                          syn, meteor),
        "after": _scores(refs, {k: results[k].caption for k in ok}, present, labels, vocab,
                         syn, meteor),
    }  # fmt: skip
    guided = {k: results[k].guided for k in ok if results[k].guided}
    if len(guided) == len(ok):
        metrics["guided"] = _scores(refs, guided, present, labels, vocab, syn, meteor)
    metrics.update(
        tau=tau, beam_size=beam_size, n_best=n_best, split=split, n=len(ok),
        classifier_accuracy=sum(results[k].label == lab for k, lab in labels.items())
        / max(len(labels), 1),
        reasons=dict(Counter(results[k].reason for k in ok)),
        skipped=[(str(r.path), r.error) for r in results if r.error],
    )  # fmt: skip
    out_dir = Path(out) if out else run.dir / "guided"
    out_dir.mkdir(parents=True, exist_ok=True)
    if out is None:  # the run's own folder: a new evaluation replaces the last one
        (out_dir / DECISIONS_FILE).unlink(missing_ok=True)
    decisions = write_decisions(out_dir / DECISIONS_FILE, results)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = _per_class(results, refs, labels, vocab, syn)
    per_csv = out_dir / "per_class.csv"
    if rows:
        head = list(rows[0])
        lines = [",".join(head)] + [",".join(str(r[h]) for h in head) for r in rows]
        per_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = Section(
        "Runs",
        table={
            "captioner": str(run.dir),
            "classifier": str(getattr(classifier_run, "dir", classifier_run)),
            "split": split,
            "images": len(ok),
            "skipped": len(metrics["skipped"]),
        },
    )
    sections = guided_sections(metrics, rows, out_dir, decisions, per_csv, out_dir / "metrics.json")
    report = write_report(out_dir / "report.html", "Guided captions", [summary, *sections])
    return GuidedEvalResult(out_dir, metrics, report, decisions)
