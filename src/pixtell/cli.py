"""The ``pixtell`` command: a thin typer skin over the Python API."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pixtell.config import (
    CaptionTrainConfig,
    ClassifyTrainConfig,
    DetectTrainConfig,
    TrainerSettings,
)

app = typer.Typer(
    help="pixtell: train, evaluate, explain and deploy small vision models on your own images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help wraps at any width; rich's panels truncate flags at 80 columns
    rich_markup_mode=None,
)
classify_app = typer.Typer(
    help="Image classification: train, evaluate, predict, sort, zero-shot, inspect.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(classify_app, name="classify")


def _console(stderr: bool = False) -> Console:
    """Lines never wrap (paths and commands stay pasteable); wide tables when piped."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(
        stderr=stderr,
        highlight=False,
        soft_wrap=True,
        width=None if stream.isatty() else 1000,
    )


console = _console()
err = _console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from pixtell import __version__

        print(f"pixtell {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """pixtell: train, evaluate, explain and deploy small vision models on your own images."""


def _shown_default(field: Any) -> str | bool:
    """The real default of a settings field, as ``--help`` shows it (False: none to show)."""
    if field.is_required():
        return False
    value = field.get_default(call_default_factory=True)
    if value is None:
        return False
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value.value if hasattr(value, "value") else value)


def _option_for(
    name: str, annotation: Any, description: str, shown: str | bool = False
) -> tuple[Any, Any]:
    """(type, typer.Option) for a config field; every default is None = 'not given'."""
    flag = "--" + name.replace("_", "-")
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, origin = args[0], typing.get_origin(args[0])
        args = list(typing.get_args(annotation))
    # defaults stay None ("not given"), so the real one is written the way click writes its own
    if origin is list:
        description += " Repeatable."
    if shown is not False:
        description += f" [default: {shown}]"
    if annotation is bool:
        return bool | None, typer.Option(None, f"{flag}/--no-{flag[2:]}", help=description)
    if origin is list:
        # typer takes no list[Literal]: plain strings here, pydantic validates the choices
        choices = [a for arg in args for a in typing.get_args(arg)]
        metavar = "|".join(map(str, choices)) if choices else "TEXT"
        return list[str] | None, typer.Option(None, flag, help=description, metavar=metavar)
    return annotation | None, typer.Option(None, flag, help=description)


def _fields_own_first(model: type[BaseModel]) -> list[tuple[str, Any]]:
    """The model's fields, those of the most derived class first (task before engine)."""
    order: list[str] = []
    for cls in model.__mro__:
        order += [
            n
            for n in getattr(cls, "__annotations__", {})
            if n in model.model_fields and n not in order
        ]
    return [(n, model.model_fields[n]) for n in order]


def config_command(
    parent: typer.Typer,
    name: str,
    model: type[BaseModel],
    run: Callable[..., None],
    *,
    positional: tuple[str, ...] = (),
    extra: list[inspect.Parameter] | None = None,
    help: str = "",
) -> None:
    """Register a command whose options are generated from a pydantic settings model.

    One source of truth for every flag (name, type, choices, help): the model's fields.
    ``run(config_file=..., **given)`` receives only the flags the user actually gave.
    """
    panels = {n: "Training engine" for n in TrainerSettings.model_fields}
    params, annotations = [], {}
    for fname, field in _fields_own_first(model):
        desc = field.description or ""
        if fname in positional:
            ann: Any = Path | None
            default = typer.Argument(None, help=desc, show_default=False, metavar=fname.upper())
        else:
            ann, default = _option_for(fname, field.annotation, desc, _shown_default(field))
            default.rich_help_panel = panels.get(fname, "Model and data")
        params.append(
            inspect.Parameter(
                fname, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann
            )
        )
        annotations[fname] = ann
    params.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Path | None,
            default=typer.Option(None, "--config", help="YAML file of settings; flags win."),
        )
    )
    annotations["config"] = Path | None
    for p in extra or []:
        params.append(p)
        annotations[p.name] = p.annotation

    def command(**kwargs: Any) -> None:
        config_file = kwargs.pop("config")
        with _friendly_errors():
            run(config_file=config_file, **kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = help
    parent.command(name, help=help)(command)


def train_command(
    parent: typer.Typer, task: str, model: type[BaseModel], data: str, help: str
) -> None:
    """``pixtell TASK train``: flags from ``model``, plus ``--resume RUN``; calls the task's API.

    ``data`` says what DATA is, for the error when neither DATA, --config nor --resume is given.
    """

    def run(config_file: Path | None, resume: Path | None = None, **given: Any) -> None:
        given = {k: v for k, v in given.items() if v is not None}
        if resume is None and "data" not in given and config_file is None:
            raise ValueError(f"give the DATA {data} (or --config FILE, or --resume RUN)")
        api = importlib.import_module(f"pixtell.{task}")
        api.train(config_file=config_file, resume=resume, **given)

    resume = inspect.Parameter(
        "resume",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Path | None,
        default=typer.Option(None, "--resume", help="Continue RUN from its last.ckpt."),
    )
    config_command(parent, "train", model, run, positional=("data",), extra=[resume], help=help)


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    """Expected user errors become one red line and exit code 2 instead of a traceback
    (``PIXTELL_DEBUG=1`` shows the traceback); Ctrl-C says what was kept and exits 130."""
    from pixtell.classify.sort import SortInterrupted
    from pixtell.engine import TrainingInterrupted
    from pixtell.models import WeightsUnavailableError

    debug = bool(os.environ.get("PIXTELL_DEBUG"))
    try:
        yield
    except TrainingInterrupted as exc:
        err.print(
            f"[yellow]interrupted[/]: best weights so far exported to {escape(str(exc.run.dir))}"
        )
        err.print(f"resume with: {escape(exc.command)}")
        raise typer.Exit(130) from None
    except SortInterrupted as exc:
        res = exc.result
        err.print(f"[yellow]interrupted[/]: {len(res.placements)} files {res.verb} so far")
        if not res.dry_run and res.placements:
            err.print(escape(f"undo with: pixtell classify sort --undo {_quote(res.manifest)}"))
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except (ValueError, FileNotFoundError, NotADirectoryError, WeightsUnavailableError) as exc:
        if debug:
            raise
        text = " ".join(str(exc).split())  # always one line
        err.print(f"[red]error:[/] {escape(text)}")
        raise typer.Exit(2) from None


def _quote(path: Path | str) -> str:
    import shlex

    return shlex.quote(str(path))


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


# -- classify --------------------------------------------------------------------------------
train_command(
    classify_app,
    "classify",
    ClassifyTrainConfig,
    "folder",
    "Train a classifier on DATA/<class>/<image> (or DATA/train|val|test/<class>/...).",
)

TTA_HELP = (
    "Test-time augmentation: none, flip, multiscale, or dense (VGG: whole image at "
    "several scales, fully convolutional)."
)
TTAOpt = Annotated[
    Literal["none", "flip", "multiscale", "dense"], typer.Option("--tta", help=TTA_HELP)
]


RunArg = Annotated[Path, typer.Argument(help="Run directory (or a file in it).")]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse larger images (decompression bombs). Default: the run's own limit.",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    Literal["torch", "onnx"],
    typer.Option(
        help="torch, or onnx: RUN/model.onnx through onnxruntime (run `pixtell export RUN` first)."
    ),
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", help="Also search sub-folders.", show_default=False)
]


@classify_app.command("evaluate")
def classify_evaluate(
    run: RunArg,
    data: Annotated[
        Path | None,
        typer.Option(help="Evaluate this DATA/<class>/ folder instead of the run's test split."),
    ] = None,
    tta: TTAOpt = "none",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Accuracy, top-5, precision/recall/F1, confusion matrix and report.html for a run."""
    from pixtell import classify

    with _friendly_errors():
        res = classify.evaluate(
            run, data=data, tta=tta, batch_size=batch_size, max_pixels=max_pixels
        )
    console.print(f"report: {escape(str(res.report))}")


def _listing_notes(listing: Any, recursive: bool) -> None:
    """Say what a folder search left out, so nothing is silently ignored."""
    if listing.not_searched and not recursive:
        err.print(
            f"[yellow]note[/]: {listing.not_searched} images in sub-folders were not searched "
            "(add --recursive)"
        )
    for path in listing.symlinks:
        err.print(
            f"[yellow]skipped[/] {escape(str(path))}: symbolic link (pass the file it points to)"
        )
    for folder, reason in listing.unreadable:
        err.print(f"[yellow]skipped[/] {escape(str(folder))}: {escape(reason)}")


@classify_app.command("predict")
def classify_predict(
    run: RunArg,
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    topk: Annotated[int, typer.Option(min=1, help="Classes to show per image.")] = 5,
    tta: TTAOpt = "none",
    recursive: RecursiveOpt = False,
    max_pixels: MaxPixelsOpt = None,
    backend: BackendOpt = "torch",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line.", show_default=False)
    ] = False,
) -> None:
    """Predict the class of images: a table, or JSON lines with --json."""
    from pixtell import classify

    with _friendly_errors():
        listing = classify.image_listing(images, recursive=recursive)
        _listing_notes(listing, recursive)
        preds = classify.predict(
            run,
            listing.paths + listing.missing,
            topk=topk,
            tta=tta,
            max_pixels=max_pixels,
            backend=backend,
        )
    if as_json:
        for p in preds:
            topk_list = [{"class": c, "probability": round(v, 6)} for c, v in p.topk]
            print(_dumps({"path": str(p.path), "error": p.error, "topk": topk_list}))
    else:
        table = Table("image", "prediction", "probability", f"next {topk - 1}" if topk > 1 else "")
        for p in preds:
            if p.error:
                table.add_row(str(p.path), "[red]unreadable[/]", "", p.error)
            else:
                table.add_row(
                    str(p.path),
                    p.label,
                    f"{p.probability:.3f}",
                    ", ".join(f"{c} {v:.2f}" for c, v in p.topk[1:]),
                )
        console.print(table)
    if any(p.error for p in preds):
        raise typer.Exit(1)


@classify_app.command("sort")
def classify_sort(
    inbox: Annotated[Path | None, typer.Argument(help="Folder of images to sort.")] = None,
    model: Annotated[Path | None, typer.Option(help="Run directory of a classifier.")] = None,
    out: Annotated[Path | None, typer.Option(help="Destination: OUT/<class>/.")] = None,
    threshold: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Below this top probability an image goes to --others."
        ),
    ] = 0.6,
    others: Annotated[str, typer.Option(help="Folder for unsure images.")] = "others",
    move: Annotated[
        bool, typer.Option("--move/--copy", help="Move files instead of copying them.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="List each file's class and probability; touch nothing.",
            show_default=False,
        ),
    ] = False,
    recursive: RecursiveOpt = False,
    tta: TTAOpt = "none",
    max_pixels: MaxPixelsOpt = None,
    backend: BackendOpt = "torch",
    undo: Annotated[
        Path | None,
        typer.Option(help="Undo a sort: put every file of this sort-manifest.jsonl back."),
    ] = None,
) -> None:
    """Sort INBOX into OUT/<class>/ by prediction; unsure images go to OUT/others/. Undoable."""
    from pixtell import classify

    with _friendly_errors():
        if undo is not None:
            res = classify.undo_sort(undo)
            console.print(
                f"restored {res.restored} moved files, removed {res.removed_copies} copies, "
                f"kept {res.already_sorted} files sorted before; {len(res.problems)} problems"
            )
            for path, reason in res.problems:
                err.print(f"[yellow]problem[/] {escape(str(path))}: {escape(reason)}")
            raise typer.Exit(1 if res.problems else 0)
        missing = [
            name
            for name, value in (("INBOX", inbox), ("--model RUN", model), ("--out DIR", out))
            if value is None
        ]
        if missing:
            raise ValueError(
                f"sorting needs {' and '.join(missing)} (usage: pixtell classify sort INBOX "
                "--model RUN --out DIR; or --undo MANIFEST)"
            )
        res = classify.sort(
            inbox,
            model=model,
            out=out,
            threshold=threshold,
            others=others,
            move=move,
            dry_run=dry_run,
            recursive=recursive,
            tta=tta,
            max_pixels=max_pixels,
            backend=backend,
        )
    if res.dry_run:
        for p in res.placements:
            extra = " already there" if p.already_sorted else ""
            line = f"{p.source} → {p.destination}  ({p.label} {p.probability:.3f}){extra}"
            console.print(escape(line))
    table = Table("folder", "images", title=res.verb)
    for name, n in sorted(res.counts.items()):
        table.add_row(name, str(n))
    console.print(table)
    if res.not_searched and not recursive:
        err.print(
            f"[yellow]note[/]: {res.not_searched} images in sub-folders were not searched "
            "(add --recursive)"
        )
    for path, reason in res.skipped:
        err.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}")
    if not res.dry_run:
        console.print(
            escape(f"{sum(res.counts.values())} files {res.verb}; manifest: {res.manifest}")
        )
        console.print(escape(f"undo with: pixtell classify sort --undo {_quote(res.manifest)}"))


@classify_app.command("inspect")
def classify_inspect(
    data: Annotated[
        Path | None, typer.Argument(help="Folder of class folders (DATA/<class>/<image>).")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Run directory: use its probabilities on images it did not train on, and "
            "look for copies across its train/val/test split."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the findings [default: runs/inspect/<DATA name>]."),
    ] = None,
    folds: Annotated[
        int, typer.Option(min=2, help="Cross-validation folds for finding label errors.")
    ] = 5,
    fix: Annotated[
        Path | None,
        typer.Option(
            help="Move the files of this (edited) label_issues.csv into their suggested class."
        ),
    ] = None,
    undo: Annotated[
        Path | None, typer.Option(help="Undo a --fix: put every file of this manifest back.")
    ] = None,
) -> None:
    """Find duplicates, leaks, likely label errors and outliers in DATA; DATA is not changed."""
    from pixtell.classify.inspect import fix as fix_labels
    from pixtell.classify.inspect import inspect as inspect_data
    from pixtell.classify.inspect import undo_fix

    with _friendly_errors():
        if undo is not None:
            res = undo_fix(undo)
            console.print(f"restored {res.restored} files; {len(res.problems)} problems")
            for path, reason in res.problems:
                err.print(f"[yellow]problem[/] {escape(str(path))}: {escape(reason)}")
            raise typer.Exit(1 if res.problems else 0)
        if data is None:
            raise ValueError(
                "inspect needs DATA (usage: pixtell classify inspect DATA [--model RUN] "
                "[--out DIR]; DATA --fix CSV; or --undo MANIFEST)"
            )
        if fix is not None:
            moved = fix_labels(fix, data)
            for path, reason in moved.skipped:
                err.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}")
            console.print(
                escape(f"{len(moved.placements)} files moved; manifest: {moved.manifest}")
            )
            console.print(
                escape(f"undo with: pixtell classify inspect --undo {_quote(moved.manifest)}")
            )
            return
        res = inspect_data(data, model=model, out=out, folds=folds)
    table = Table("finding", "count")
    for key in ("images", "unreadable", "label_issues", "exact_duplicate_groups"):
        table.add_row(key.replace("_", " "), str(res.counts[key]))
    for key in ("near_duplicate_groups", "label_conflict_groups", "leak_groups", "outliers"):
        table.add_row(key.replace("_", " "), str(res.counts[key]))
    console.print(table)
    console.print(f"label errors from: {escape(res.method)}")
    console.print(f"report: {escape(str(res.report))}")


@classify_app.command("zero-shot")
def classify_zero_shot(
    data: Annotated[Path, typer.Argument(help="Folder of class folders (DATA/<class>/<image>).")],
    clip: Annotated[
        str, typer.Option(help="CLIP checkpoint: a Hugging Face name or a local directory.")
    ] = "openai/clip-vit-base-patch32",
    prompts: Annotated[
        list[str] | None,
        typer.Option(
            help="Prompt template with {} for the class name; repeat for an ensemble. "
            '[default: "a photo of a {}"]',
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Parent folder of run directories.")] = Path("runs"),
    name: Annotated[
        str | None, typer.Option(help="Run name [default: zero-shot, numbered]", show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
) -> None:
    """Classify DATA by its class names with CLIP (no training); writes an evaluated run."""
    from pixtell import classify

    with _friendly_errors():
        run = classify.zero_shot(
            data,
            clip=clip,
            prompts=prompts or ["a photo of a {}"],
            out=out,
            name=name,
            batch_size=batch_size,
        )
    console.print(escape(f"run: {run.dir} (use it as --model of classify predict / sort)"))


# -- shared commands -------------------------------------------------------------------------
@app.command("models")
def models_cmd(
    task: Annotated[str | None, typer.Option(help="Only this task's models.")] = None,
) -> None:
    """List the registered models with parameter counts and input sizes."""
    from pixtell.models import count_params, create, list_models

    table = Table("task", "model", "params", "input", "pretrained", "description")
    for spec in list_models(task):
        n = count_params(create(spec.name, spec.task, num_classes=1000, pretrained=False))
        table.add_row(
            spec.task,
            spec.name,
            f"{n / 1e6:.2f}M",
            f"{spec.input_size}",
            "yes" if spec.has_pretrained else "no",
            spec.description,
        )
    console.print(table)


@app.command("demo")
def demo_cmd(
    task: Annotated[
        Literal["all", "classify", "detect", "caption", "guided"],
        typer.Option(
            help="Which task to demonstrate; guided: the hallucination filter (trains the "
            "classifier first)."
        ),
    ] = "all",
    out: Annotated[Path, typer.Option(help="Where the data and runs go.")] = Path("demo-runs"),
    n_per_class: Annotated[
        int, typer.Option(min=10, help="Classification: generated images per class.")
    ] = 500,
    epochs: Annotated[int, typer.Option(min=1, help="Classification: training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
) -> None:
    """Generate data (no download), train and evaluate each task on the CPU, write a report."""
    from pixtell.demo import run_demo

    with _friendly_errors():
        report = run_demo(out, task=task, n_per_class=n_per_class, epochs=epochs, seed=seed)
    console.print(f"[bold green]demo finished[/]: open {escape(str(report))}")


# -- caption ---------------------------------------------------------------------------------
caption_app = typer.Typer(
    help="Image captioning: train, evaluate, predict.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(caption_app, name="caption")


train_command(
    caption_app,
    "caption",
    CaptionTrainConfig,
    "folder or file",
    "Train a captioner on Flickr8k (captions.txt or Flickr8k.token.txt), a COCO "
    "captions JSON, a Karpathy split JSON or pixtell demo scenes.",
)

BeamOpt = Annotated[
    int, typer.Option("--beam-size", "--beam", min=1, help="Beam width (1: greedy).")
]


BLIP_MODEL_HELP = "blip: a pretrained BLIP (--blip) instead of a RUN."
BlipModelOpt = Annotated[Literal["blip"] | None, typer.Option("--model", help=BLIP_MODEL_HELP)]
BlipOpt = Annotated[
    str, typer.Option(help="--model blip: Hugging Face checkpoint name or local directory.")
]
PrefixOpt = Annotated[
    str | None, typer.Option(help="BLIP: text the caption starts with (e.g. 'a photo of').")
]
DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"


def _blip_source(run: Path | None, model: str | None, blip: str) -> str | Path | None:
    """What BLIP captions with: a fine-tuned BLIP run, or --blip with --model blip (else None)."""
    from pixtell.caption.blip import is_blip_run

    if run is not None and is_blip_run(run):
        return run
    return blip if model == "blip" else None


@caption_app.command("evaluate")
def caption_evaluate(
    run: Annotated[
        Path | None,
        typer.Argument(
            help="Run directory (or a file in it); leave it out with --model blip --data DATA.",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        Literal["test", "val", "train", "all"],
        typer.Option(help="Which split of the run (or of --data) to score; all: all of --data."),
    ] = "test",
    beam_size: BeamOpt = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    max_pixels: MaxPixelsOpt = None,
    meteor: Annotated[
        bool | None,
        typer.Option(
            "--meteor/--no-meteor",
            help="METEOR (needs Java). Default: when Java is installed.",
            show_default=False,
        ),
    ] = None,
    model: BlipModelOpt = None,
    blip: BlipOpt = DEFAULT_BLIP,
    data: Annotated[
        Path | None,
        typer.Option(help="BLIP: a captions dataset to score (its test split, or --split)."),
    ] = None,
    prefix: PrefixOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="BLIP: output folder. Default: RUN/eval or runs/caption/<blip>-eval."),
    ] = None,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr of really decoded captions; report.html for a run."""
    from pixtell import caption

    with _friendly_errors():
        source = _blip_source(run, model, blip)
        if source is None and (data is not None or run is None):
            raise ValueError("give a RUN directory, or --model blip --data DATA")
    if source is not None:
        from pixtell.caption.blip import evaluate_blip

        with _friendly_errors():
            res = evaluate_blip(
                source, data, split=split, beam_size=beam_size, prefix=prefix, out=out,
                batch_size=batch_size, max_pixels=max_pixels, meteor=meteor,
            )  # fmt: skip
        console.print(f"report: {escape(str(res.report))}")
        return
    with _friendly_errors():
        res = caption.evaluate(
            run,
            split=split,
            beam_size=beam_size,
            batch_size=batch_size,
            max_pixels=max_pixels,
            meteor=meteor,
        )
    console.print(f"report: {escape(str(res.report))}")


GuideOpt = Annotated[
    Path | None,
    typer.Option(
        "--guide",
        help="Classification run whose top label guides the caption and the hallucination filter.",
    ),
]
TauOpt = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Filter threshold: captions are corrected when p >= tau."),
]
NBestOpt = Annotated[
    int, typer.Option("--n-best", min=1, help="Captions per image the filter may choose from.")
]
SynonymsOpt = Annotated[
    Path | None,
    typer.Option(help="YAML file {class: [synonym, ...]} for class mentions."),
]


def _guided_predict(
    run: Path | str,
    paths: list[Path],
    guide: Path,
    *,
    tau: float,
    beam_size: int,
    n_best: int,
    synonyms: Path | None,
    out: Path | None,
    as_json: bool,
    pretrained_blip: bool = False,
) -> None:
    """``caption predict --guide``: filtered captions, with label, probability and reason.
    ``run`` is a caption run (pixtell's or a fine-tuned BLIP), or with ``pretrained_blip`` a
    BLIP checkpoint name or folder."""
    from pixtell.guided import DECISIONS_FILE, guided_captions
    from pixtell.runs import Run

    with _friendly_errors():
        if pretrained_blip:  # --model blip --blip NAME: guided by a label prefix
            from pixtell.caption.blip import BlipCaptioner

            folder = out or Path("runs/caption/blip-guided")
            captioner: Any = BlipCaptioner.from_pretrained(str(run))
        else:
            folder, captioner = out or Run.load(Path(run)).dir / "guided", run
        res = guided_captions(
            paths,
            captioner,
            guide,
            tau=tau,
            beam_size=beam_size,
            n_best=min(n_best, beam_size),
            synonyms=synonyms,
            out=folder,
        )
    if as_json:
        for r in res:
            print(_dumps(r.record()))
    else:
        table = Table("image", "caption", "label", "p", "reason")
        for r in res:
            if r.error:
                table.add_row(escape(str(r.path)), f"[red]unreadable[/]: {escape(r.error)}")
            else:
                cells = [r.path, r.caption, r.label, f"{r.probability:.2f}", r.reason]
                table.add_row(*(escape(str(c)) for c in cells))
        console.print(table)
        err.print(f"decisions: {escape(str(folder / DECISIONS_FILE))} (or the next free name)")
    if any(r.error for r in res):
        raise typer.Exit(1)


def _blip_predict(
    source: str | Path, paths: list[Path], *, recursive: bool, as_json: bool, **kw: Any
) -> None:
    """``caption predict --model blip``: n-best captions with their scores."""
    from pixtell.caption.blip import predict_blip
    from pixtell.data.folders import list_images

    with _friendly_errors():
        if not paths:
            raise ValueError("give IMAGES (files and/or folders) to caption")
        listing = list_images(paths, recursive=recursive)
        _listing_notes(listing, recursive)
        preds = predict_blip(source, listing.paths + listing.missing, **kw)
    if as_json:
        for p in preds:
            row = {"path": str(p.path), "caption": p.caption, "error": p.error}
            print(_dumps({**row, "captions": p.captions, "scores": p.scores}))
    else:
        table = Table("image", "caption", "score")
        for p in preds:
            if p.error:
                table.add_row(escape(str(p.path)), f"[red]unreadable[/]: {escape(p.error)}", "")
            for k, (text, score) in enumerate(zip(p.captions, p.scores, strict=True)):
                table.add_row(escape(str(p.path)) if k == 0 else "", escape(text), f"{score:.3f}")
        console.print(table)
    if any(p.error for p in preds):
        raise typer.Exit(1)


@caption_app.command("predict")
def caption_predict(
    ctx: typer.Context,
    run: Annotated[
        Path | None,
        typer.Argument(
            help="Run directory (or a file in it); with --model blip, the first image.",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        list[Path] | None, typer.Argument(help="Image files and/or folders.", show_default=False)
    ] = None,
    beam_size: BeamOpt = 5,
    attention: Annotated[
        bool,
        typer.Option(
            "--attention", help="Write a PNG per image: a heat-map per word.", show_default=False
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the --attention PNGs (default RUN/attention) or the --guide "
            "decisions (default RUN/guided)."
        ),
    ] = None,
    recursive: RecursiveOpt = False,
    max_pixels: MaxPixelsOpt = None,
    backend: BackendOpt = "torch",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line.", show_default=False)
    ] = False,
    guide: GuideOpt = None,
    tau: TauOpt = 0.5,
    n_best: NBestOpt = 3,
    synonyms: SynonymsOpt = None,
    model: BlipModelOpt = None,
    blip: BlipOpt = DEFAULT_BLIP,
    prefix: PrefixOpt = None,
) -> None:
    """Caption images: a table, or JSON lines (path, caption, error) with --json."""
    from pixtell import caption
    from pixtell.data.folders import list_images

    with _friendly_errors():
        source = _blip_source(run, model, blip)
    if source is not None:
        paths = ([] if source == run or run is None else [run]) + list(images or [])
    if source is not None and guide is not None:
        kw = dict(tau=tau, beam_size=beam_size, n_best=n_best, synonyms=synonyms, out=out)
        pretrained = source != run  # --blip NAME rather than a fine-tuned BLIP run
        return _guided_predict(
            source, paths, guide, as_json=as_json, pretrained_blip=pretrained, **kw
        )
    if source is not None:
        given = ctx.get_parameter_source("n_best")  # BLIP lists one caption unless asked
        n = n_best if given is not None and given.name != "DEFAULT" else 1
        kw = dict(beam_size=max(beam_size, n), prefix=prefix, n_best=n, max_pixels=max_pixels)
        return _blip_predict(source, paths, recursive=recursive, as_json=as_json, **kw)
    if run is None or not images:
        err.print("[red]error:[/] give a RUN directory and IMAGES (or --model blip IMAGES)")
        raise typer.Exit(2)
    with _friendly_errors():
        listing = list_images(images, recursive=recursive)
        _listing_notes(listing, recursive)
    if guide is not None:
        if attention or backend != "torch":
            err.print("[red]error:[/] --guide works with the torch backend and no --attention")
            raise typer.Exit(2)
        paths = listing.paths + listing.missing
        kw = dict(tau=tau, beam_size=beam_size, n_best=n_best, synonyms=synonyms, out=out)
        return _guided_predict(run, paths, guide, as_json=as_json, **kw)
    with _friendly_errors():
        preds = caption.predict(
            run,
            listing.paths + listing.missing,
            beam_size=beam_size,
            attention=attention,
            out=out,
            max_pixels=max_pixels,
            backend=backend,
        )
    if as_json:
        for p in preds:
            row = {"path": str(p.path), "caption": p.caption, "error": p.error}
            if attention:
                row["attention"] = str(p.attention) if p.attention else None
            print(_dumps(row))
    else:
        table = Table("image", "caption", *(["attention"] if attention else []))
        for p in preds:
            cells = [escape(str(p.path)), escape(p.caption) if not p.error else ""]
            if p.error:
                cells[1] = f"[red]unreadable[/]: {escape(p.error)}"
            if attention:
                cells.append(escape(str(p.attention or "")))
            table.add_row(*cells)
        console.print(table)
    if any(p.error for p in preds):
        raise typer.Exit(1)


@caption_app.command("hallucination")
def caption_hallucination(
    run: RunArg,
    guide: Annotated[
        Path,
        typer.Option("--guide", help="Classification run whose top label guides the filter."),
    ],
    split: Annotated[
        Literal["test", "val", "train"], typer.Option(help="Which split of the run to score.")
    ] = "test",
    tau: TauOpt = 0.5,
    beam_size: BeamOpt = 3,
    n_best: NBestOpt = 3,
    synonyms: SynonymsOpt = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Objects per image: demo *-meta.jsonl, COCO instances JSON or {image: [classes]}."
            " Default: the run's demo metadata, else each image's class folder."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder. Default: RUN/guided.")] = None,
) -> None:
    """CHAIR, label-mention rate and caption scores before and after the hallucination filter;
    decisions.jsonl, a per-class table and report.html."""
    from pixtell.guided import evaluate_guided

    with _friendly_errors():
        res = evaluate_guided(
            run,
            guide,
            split=split,
            tau=tau,
            beam_size=beam_size,
            n_best=min(n_best, beam_size),
            synonyms=synonyms,
            truth=truth,
            out=out,
        )
    m = res.metrics
    table = Table("", "before", "after")
    for key in ("Bleu_4", "CIDEr", "CHAIR_i", "CHAIR_s", "mention_rate"):
        table.add_row(key, f"{m['before'][key]:.4f}", f"{m['after'][key]:.4f}")
    console.print(table)
    console.print(f"report: {escape(str(res.report))}")


# -- detect ----------------------------------------------------------------------------------
detect_app = typer.Typer(
    help="Object detection: analyze, convert, train, evaluate, predict.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(detect_app, name="detect")
DetectFormatOpt = Annotated[
    Literal["voc", "coco", "yolo"] | None,
    typer.Option("--format", help="Force the dataset format [default: detected]"),
]


@detect_app.command("analyze")
def detect_analyze(
    data: Annotated[Path, typer.Argument(help="VOC or YOLO folder, or COCO JSON / folder.")],
    dataset_format: DetectFormatOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder [default: runs/detect/analysis-<DATA name>]"),
    ] = None,
) -> None:
    """Class balance, boxes per image, box sizes and shapes, positions, empty images: plots."""
    from pixtell import detect

    with _friendly_errors():
        res = detect.analyze(data, out=out, format=dataset_format)
    console.print(f"report: {escape(str(res.report))}")


@detect_app.command("convert")
def detect_convert(
    src: Annotated[Path, typer.Argument(help="Dataset to convert (any format).")],
    dest: Annotated[Path, typer.Argument(help="New folder (must not exist or be empty).")],
    to: Annotated[Literal["coco", "voc", "yolo"], typer.Option("--to", help="Target format.")],
    dataset_format: DetectFormatOpt = None,
) -> None:
    """Write a detection dataset in another format (images copied, boxes converted)."""
    from pixtell import detect

    with _friendly_errors():
        path = detect.convert(src, dest, to=to, format=dataset_format)
    console.print(f"written: {escape(str(path))}")


train_command(
    detect_app,
    "detect",
    DetectTrainConfig,
    "dataset",
    "Train a detector on a VOC, COCO or YOLO dataset (best checkpoint: validation mAP).",
)
ConfOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Score threshold for drawn boxes and counts.")
]


@detect_app.command("evaluate")
def detect_evaluate(
    run: Annotated[
        Path | None,
        typer.Argument(help="Run directory (or a file in it).", show_default=False, metavar="RUN"),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the run's data to score.")] = "test",
    data: Annotated[
        Path | None,
        typer.Option(help="Instead of a run: a COCO ground-truth JSON (with --predictions)."),
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="A COCO results JSON scored against --data.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder [default: RUN/eval]; needed with --data.")
    ] = None,
    conf: ConfOpt = 0.5,
    iou: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="IoU for a match in the confusion matrix.")
    ] = 0.5,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    all_checkpoints: Annotated[
        bool,
        typer.Option(
            "--all-checkpoints",
            help="Also score every checkpoint the run kept and plot mAP over training.",
            show_default=False,
        ),
    ] = False,
) -> None:
    """COCO mAP (equal to pycocotools), per-class AP, confusion matrix, PR curves, report."""
    from pixtell import detect

    with _friendly_errors():
        if data is not None or predictions is not None:
            if run is not None or data is None or predictions is None or out is None:
                raise ValueError(
                    "score files with --data GT.json --predictions DETS.json --out DIR (and no RUN)"
                )
            res = detect.evaluate_files(data, predictions, out, conf=conf, iou=iou)
        elif run is None:
            raise ValueError("give a RUN directory (or --data GT.json --predictions DETS.json)")
        else:
            res = detect.evaluate(
                run,
                split=split,
                conf=conf,
                iou=iou,
                batch_size=batch_size,
                out=out,
                all_checkpoints=all_checkpoints,
            )
    console.print(f"report: {escape(str(res.report))}")


@detect_app.command("predict")
def detect_predict(
    run: RunArg,
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Lowest score kept.")] = 0.3,
    out: Annotated[
        Path | None, typer.Option(help="Output folder [default: a new RUN/predict]")
    ] = None,
    recursive: RecursiveOpt = False,
    draw: Annotated[bool, typer.Option("--draw/--no-draw", help="Write drawn PNGs.")] = True,
    backend: BackendOpt = "torch",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line.", show_default=False)
    ] = False,
) -> None:
    """Detect objects: COCO results JSON and PNGs with boxes; a table or --json lines."""
    from pixtell import detect

    with _friendly_errors():
        listing = detect.image_listing(images, recursive=recursive)
        _listing_notes(listing, recursive)
        preds = detect.predict(
            run, listing.paths + listing.missing, conf=conf, out=out, draw=draw, backend=backend
        )
    if as_json:
        for p in preds:
            objects = [
                {"class": c, "score": s, "box": b}
                for c, s, b in zip(p.labels, p.scores, p.boxes, strict=True)
            ]
            print(_dumps({"path": str(p.path), "error": p.error, "objects": objects}))
    else:
        table = Table("image", "objects", "classes")
        for p in preds:
            if p.error:
                table.add_row(escape(str(p.path)), "[red]unreadable[/]", escape(p.error))
            else:
                shown = [f"{c} {s:.2f}" for c, s in zip(p.labels, p.scores, strict=True)]
                more = f", … {len(shown) - 8} more" if len(shown) > 8 else ""
                table.add_row(
                    escape(str(p.path)), str(len(shown)), escape(", ".join(shown[:8])) + more
                )
        console.print(table)
        console.print(f"results: {escape(str(preds.results_json))}")
    if any(p.error for p in preds):
        raise typer.Exit(1)


# -- serve -----------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to serve (any task).")],
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 7860,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest upload accepted (413 beyond).")
    ] = 10.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="PIXTELL_API_KEY",
            show_envvar=True,
            help="Key required on every route but /health (X-API-Key header).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Images processed at the same time (threads).")
    ] = 4,
    max_pixels: MaxPixelsOpt = None,
    backend: Annotated[
        Literal["torch", "onnx"],
        typer.Option(help="onnx: classifiers run their exported model.onnx on onnxruntime."),
    ] = "torch",
) -> None:
    """Serve runs over HTTP: REST API (/docs) and a Gradio page at / (needs the serve extra)."""
    with _friendly_errors():
        try:
            import uvicorn

            from pixtell.serve import create_app
        except ImportError as exc:
            raise ValueError(
                f"pixtell serve needs the serve extra ({exc.name} is missing): "
                "pip install 'pixtell[serve]'"
            ) from None
        server = create_app(
            runs,
            max_upload_mb=max_upload_mb,
            api_key=api_key,
            workers=workers,
            max_pixels=max_pixels,
            backend=backend,
        )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"[yellow]warning[/]: serving on {escape(host)} without --api-key")
    console.print(f"serving {len(runs)} run(s) on http://{escape(host)}:{port}/ (API: /docs)")
    uvicorn.run(server, host=host, port=port, log_level="info")


# -- export and profile ----------------------------------------------------------------------
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace files that already exist.", show_default=False)
]


@app.command("export")
def export_cmd(
    run: RunArg,
    fmt: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    dynamic_batch: Annotated[
        bool,
        typer.Option(
            "--dynamic-batch", help="Accept any batch size, not only 1.", show_default=False
        ),
    ] = False,
    opset: Annotated[int, typer.Option(min=7, help="ONNX opset version.")] = 18,
    force: ForceOpt = False,
) -> None:
    """Export a run's model to ONNX (checked against PyTorch) into the run directory."""
    with _friendly_errors():
        if fmt.lower() != "onnx":
            raise ValueError(f"unknown --format {fmt!r}: only onnx is supported")
        from pixtell.export import export_onnx

        result = export_onnx(run, dynamic_batch=dynamic_batch, opset=opset, force=force)
    for path in result.files:
        console.print(f"wrote {escape(str(path))}")
    console.print(
        f"onnx.checker passed; onnxruntime matches PyTorch within {result.max_abs_diff:.1e}"
    )


@app.command("profile")
def profile_cmd(
    models: Annotated[
        list[str], typer.Argument(help="Registered model names and/or run directories.")
    ],
    img_size: Annotated[
        int | None, typer.Option(min=8, help="Image side [default: each model's own]")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    backend: Annotated[str, typer.Option(help="Comma-separated: torch, onnx.")] = "torch",
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads [default: torch's]")
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs after warm-up.")] = 20,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the rows as CSV.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the table as an HTML page.")] = None,
    force: ForceOpt = False,
) -> None:
    """Parameters, GMACs, peak memory, latency (median, p90) and throughput of models."""
    with _friendly_errors():
        try:
            sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
        except ValueError:
            raise ValueError(
                f"--batch-sizes takes numbers like 1,8 (got {batch_sizes!r})"
            ) from None
        backends = [b.strip() for b in backend.split(",") if b.strip()]
        for out in (csv_path, html):
            if out is not None and out.exists() and not force:
                raise ValueError(f"{out} already exists; pass --force to replace it")
        from pixtell.profile import TABLE_HEADER, profile_models, table_rows, write_csv, write_html

        rows = profile_models(
            models,
            img_size=img_size,
            batch_sizes=sizes,
            backends=backends,
            threads=threads,
            runs=runs,
            on_row=lambda r: err.print(
                f"{escape(r.model)} {r.backend} batch {r.batch_size}: "
                + (f"[red]{escape(r.error)}[/]" if r.error else f"{r.step_time_ms:.1f} ms")
            ),
        )
    table = Table(*TABLE_HEADER)
    for cells in table_rows(rows):
        table.add_row(*map(escape, cells))
    console.print(table)
    if csv_path:
        console.print(f"csv: {escape(str(write_csv(rows, csv_path)))}")
    if html:
        console.print(f"html: {escape(str(write_html(rows, html)))}")
    if any(r.error for r in rows):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="pixtell")


if __name__ == "__main__":
    sys.exit(main())
