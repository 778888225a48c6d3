"""The `lightsv` command line.

Each subcommand is an `_add_<name>` function (its arguments) and a `_run_<name>` function (its
work, returning an exit code), registered in COMMANDS. Deliberate errors end as one line on
stderr and exit code 2, never as a traceback.
"""

import argparse
import importlib
import json
import sys

import yaml

from lightsv.errors import ConfigError, LightsvError

PROG = "lightsv"
USER_ERRORS = (LightsvError, FileNotFoundError, yaml.YAMLError)


def _progress(items: list, desc: str):
    from tqdm import tqdm

    # disable=None: silent when stderr is not a terminal (pipes, tests)
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, disable=None)


def _models():
    # Imported on use, so `lightsv --help` does not pay for importing torch.
    return importlib.import_module("lightsv.models")


def _add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="registered model names or checkpoint files (.pt; profiled as they are, without --subsets variants); "
        "default: every registered model",
    )
    parser.add_argument(
        "--subsets",
        nargs="*",
        type=int,
        default=[2, 4],
        metavar="K",
        help="subset counts K for the transformation module (default: 2 4; none: plain only)",
    )
    parser.add_argument("--share", action="store_true", help="one narrow block shared by all subsets")
    parser.add_argument("--fusion", default="sum", help="cross-subset fusion (default: sum)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of audio per input (default: 3)")
    parser.add_argument("--batch", type=int, default=1, help="utterances per forward pass (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for latency (default: 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes (default: 10)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")


def _run_profile(args: argparse.Namespace) -> int:
    from lightsv.profile import profile_table, profile_variants

    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {args.seconds}")
    from pathlib import Path

    from lightsv.profile import profile_checkpoint

    known = _models().MODELS
    names = args.models or list(known)
    checkpoints = {n for n in names if n not in known and (Path(n).exists() or n.endswith(".pt"))}
    unknown = [n for n in names if n not in known and n not in checkpoints]
    if unknown:
        raise ConfigError(
            f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(sorted(known))} "
            "(or give a checkpoint file)"
        )
    variants = [{"subsets": k, "share": args.share, "fusion": args.fusion} for k in args.subsets]
    options = dict(seconds=args.seconds, batch=args.batch, threads=args.threads, repeats=args.repeats)
    rows = []
    for name in names:
        if name in checkpoints:
            rows.append(profile_checkpoint(name, **options))
            continue
        rows += profile_variants(
            name,
            variants,
            progress=lambda items, name=name: _progress(items, desc=name),
            seconds=args.seconds,
            batch=args.batch,
            threads=args.threads,
            repeats=args.repeats,
        )
    print(json.dumps(rows, indent=2) if args.json else profile_table(rows))
    return 0


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="M", help="checkpoint or .onnx file (default: the shipped model)")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="torch (checkpoints) or onnx (onnxruntime, no torch needed); "
        "auto: onnx for an .onnx model or without torch, else torch (default: auto)",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for embedding (default: 1)")
    parser.add_argument(
        "--no-vad", dest="vad", action="store_false", help="embed clips whole, without trimming them to their speech"
    )


def _add_decision(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, metavar="T", help="accept when score >= T (overrides the model's)")
    group.add_argument(
        "--operating-point", metavar="OP", help="the model's calibrated threshold to use: eer (default) or far=RATE"
    )
    parser.add_argument(
        "--exit-code", action="store_true", help="exit 1 on reject (0 on accept), for shell scripts that gate on it"
    )
    parser.add_argument(
        "--cohort",
        metavar="FILE",
        help="score with AS-norm against a cohort file and decide on its calibrated thresholds (its "
        "duration-aware LLR where it has one, as for --stream); 'default': the cohort shipped for the shipped model",
    )


def _add_db(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument("--db", required=True, metavar="DB", help="enrollment database (SQLite file)")
    _add_model(parser)
    parser.add_argument("--json", action="store_true", help=json_help)


def _verifier(args: argparse.Namespace, db=None):
    from lightsv.verifier import Verifier

    v = Verifier.load(
        args.model,
        db=db,
        vad=getattr(args, "vad", True),
        threshold=getattr(args, "threshold", None),
        operating_point=getattr(args, "operating_point", None),
        backend=getattr(args, "backend", "auto"),
        threads=getattr(args, "threads", None),
    )
    if getattr(args, "cohort", None):
        from lightsv.cohort import names_a_file

        if not names_a_file(args.cohort):
            v.close()
            raise ConfigError(f"--cohort {args.cohort}: give a cohort file (.npz) or 'default'")
        try:
            v.set_cohort(args.cohort)
        except BaseException:
            v.close()
            raise
    return v


def _writable(*paths: str | None) -> None:
    """Refuse output paths that cannot be written, before any work is done for them."""
    import os
    from pathlib import Path

    for path in paths:
        if path is None:
            continue
        target = Path(path)
        parent = target.parent if str(target.parent) else Path(".")
        if target.is_dir():
            raise LightsvError(f"cannot write {path}: is a directory")
        if not parent.is_dir():
            raise LightsvError(f"cannot write {path}: folder {parent} does not exist")
        if not os.access(target if target.exists() else parent, os.W_OK):
            raise LightsvError(f"cannot write {path}: permission denied")


def _existing_db(path: str) -> str:
    from pathlib import Path

    if not Path(path).is_file():
        raise LightsvError(
            f"{path}: no enrollment database (create one with 'lightsv enroll --db {path} NAME CLIP...')"
        )
    return path


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def _add_demo(parser: argparse.ArgumentParser) -> None:
    _add_model(parser)
    parser.add_argument(
        "--enroll-clips",
        type=int,
        default=2,
        metavar="N",
        help="clips per example speaker to enroll; the rest are tested (default: 2)",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from lightsv.verifier import example_clips

    speakers = example_clips()
    if not all(0 < args.enroll_clips < len(clips) for clips in speakers.values()):
        raise ConfigError(
            f"--enroll-clips must leave at least one of each speaker's {min(map(len, speakers.values()))} clips to test"
        )
    v = _verifier(args)
    for name, clips in speakers.items():
        v.enroll(name, clips[: args.enroll_clips])
    enrolled = {name: v.speaker_embedding(name) for name in speakers}
    held_out = [(true_name, clip) for true_name, clips in speakers.items() for clip in clips[args.enroll_clips :]]
    rows, correct, top_right = [], 0, 0
    for (true_name, clip), emb in zip(held_out, v.embed_many([clip for _, clip in held_out]), strict=True):
        scores = {name: v.score(enrolled[name], emb) for name in speakers}
        top_right += max(scores, key=lambda name: scores[name]) == true_name
        for name, score in scores.items():
            accept = None if v.threshold is None else score >= v.threshold
            correct += accept == (name == true_name)
            rows.append(
                [
                    name,
                    f"{clip.parent.name}/{clip.name}",
                    score,
                    v.threshold,
                    {None: "-", True: "yes", False: "no"}[accept],
                    "yes" if name == true_name else "no",
                ]
            )
    print(_table(["speaker", "clip", "score", "threshold", "accept", "same speaker"], rows))
    ranked = f"the best-scoring speaker is the right one for {top_right}/{len(held_out)} clips"
    if v.threshold is None:
        print(f"no threshold (this model has no calibration): {ranked}")
    else:
        print(f"{correct}/{len(rows)} decisions correct at threshold {v.threshold:.4f}; {ranked}")
    return 0


def _add_enroll(parser: argparse.ArgumentParser) -> None:
    _add_db(parser, "print the result as JSON")
    parser.add_argument("name", metavar="NAME", help="speaker name")
    parser.add_argument("clips", nargs="+", metavar="CLIP", help="audio files of the speaker")


def _run_enroll(args: argparse.Namespace) -> int:
    with _verifier(args, db=args.db) as v:
        done = v.enroll(args.name, args.clips)
    skipped = [args.clips[i] for i in done.skipped]
    if args.json:
        print(json.dumps({"speaker": args.name, "added": done.added, "skipped": skipped, "total": done.total}))
    else:
        line = f"enrolled {args.name}: {done.added} clip(s) added, {done.total} in total"
        if skipped:
            line += f"; skipped {len(skipped)} already enrolled: {', '.join(skipped)}"
        print(line)
    return 0


def _add_verify(parser: argparse.ArgumentParser) -> None:
    _add_db(parser, "print the result as JSON")
    _add_decision(parser)
    parser.add_argument("name", metavar="NAME", help="enrolled speaker")
    parser.add_argument("clip", metavar="CLIP", nargs="?", help="audio file to verify (with --stream: or --mic)")
    from lightsv.streaming import add_stream_options

    add_stream_options(parser)
    parser.add_argument(
        "--spoof-check", action="store_true", help="also run the countermeasure; a clip judged spoofed is rejected"
    )
    parser.add_argument("--countermeasure", metavar="CM", help="countermeasure file (default: the shipped one)")


def _run_verify(args: argparse.Namespace) -> int:
    if args.stream and (args.threshold is not None or args.operating_point):
        raise ConfigError(
            "--threshold and --operating-point do not apply to --stream: the stream decides at the "
            "miss and false-accept rates of --error"
        )
    if args.stream:
        from lightsv.streaming import run_stream_command

        with _verifier(args, db=_existing_db(args.db)) as v:
            return run_stream_command(v, args)
    if args.clip is None:
        raise LightsvError("verify needs a CLIP (or --stream --mic)")
    with _verifier(args, db=_existing_db(args.db)) as v:
        r = v.verify(args.name, args.clip, spoof_check=args.spoof_check, countermeasure=args.countermeasure)
    if args.json:
        print(json.dumps({**r.as_dict(), "clip": args.clip}))
    else:
        decision = "accept" if r.accept else "reject"
        llr = "" if getattr(r, "llr", None) is None else f", llr {r.llr:+.2f} at {r.seconds:.2f} s"
        spoof = getattr(r, "spoof_score", None)
        checked = "" if spoof is None else f", spoof score {spoof:.4f} ({'bona fide' if r.bonafide else 'spoof'})"
        print(f"{args.name} vs {args.clip}: score {r.score:.4f}, threshold {r.threshold:.4f}{llr}{checked}: {decision}")
    return 1 if args.exit_code and not r.accept else 0


def _add_identify(parser: argparse.ArgumentParser) -> None:
    _add_db(parser, "print the result as JSON")
    _add_decision(parser)
    parser.add_argument("clip", metavar="CLIP", help="audio file of an unknown speaker")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="best matches to show (default: 5)")


def _run_identify(args: argparse.Namespace) -> int:
    with _verifier(args, db=_existing_db(args.db)) as v:
        r = v.identify(args.clip, top_k=args.top_k)
    if args.json:
        print(json.dumps({**r.as_dict(), "clip": args.clip}))
    elif r.speaker is None:
        print(f"{args.clip}: nobody is enrolled in {args.db}")
    else:
        print(_table(["rank", "speaker", "score"], [[i + 1, n, s] for i, (n, s) in enumerate(r.candidates)]))
        decision = "accept" if r.accept else "reject (no enrolled speaker matches)"
        print(f"best: {r.speaker}, score {r.score:.4f}, threshold {r.threshold:.4f}: {decision}")
    return 1 if args.exit_code and not r.accept else 0


def _add_list(parser: argparse.ArgumentParser) -> None:
    _add_db(parser, "print a JSON list of speakers")
    parser.add_argument("--sources", action="store_true", help="also list where each enrolled clip came from")


def _store(args: argparse.Namespace):
    # Listing and deleting need no model unless one is named, and then it must be the store's.
    if args.model is not None:
        return _verifier(args, db=_existing_db(args.db))
    from lightsv.store import EnrollmentStore

    return EnrollmentStore(_existing_db(args.db))


def _run_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        speakers = store.speakers(sources=args.sources)
    if args.json:
        print(json.dumps(speakers, indent=2))
    elif not speakers:
        print("no speakers enrolled")
    else:
        print(_table(["speaker", "clips", "updated"], [[s["name"], s["count"], s["updated"]] for s in speakers]))
        if args.sources:
            for s in speakers:
                print(f"{s['name']}: {', '.join('-' if src is None else src for src in s['sources'])}")
        print(f"{len(speakers)} speaker(s), {sum(s['count'] for s in speakers)} clip(s)")
    return 0


def _add_delete(parser: argparse.ArgumentParser) -> None:
    _add_db(parser, "print the result as JSON")
    parser.add_argument("name", metavar="NAME", help="speaker to remove")


def _run_delete(args: argparse.Namespace) -> int:
    with _store(args) as store:
        removed = store.delete(args.name)
    print(
        json.dumps({"speaker": args.name, "removed": removed})
        if args.json
        else f"deleted {args.name} ({removed} embedding(s))"
    )
    return 0


def _add_score(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "trials", metavar="TRIALS", help="trial list, VoxCeleb1 format: '<1|0> <enroll> <test>' per line"
    )
    parser.add_argument("--wav-root", required=True, metavar="DIR", help="folder the trial paths are relative to")
    _add_model(parser)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--plot", metavar="PNG", help="write a DET curve")
    parser.add_argument("--out", metavar="FILE", help="write '<enroll> <test> <score> <target|nontarget>' lines")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default: 16)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="score the trials whose clips can be used and report the clips dropped (default: refuse the list, "
        "naming every bad clip)",
    )
    parser.add_argument(
        "--calibrate",
        metavar="OUT",
        help="write a copy of the model (OUT may be the model itself) "
        "whose decision thresholds (EER point, false-accept rates 1 %% and 0.1 %%) come from these trials",
    )


def _embed_all(v, root, files: list[str], batch_size: int) -> tuple[dict, dict[str, str]]:
    """Embeddings of every usable file and {file: problem} for the rest; a batch with a bad clip is
    redone clip by clip, so one bad file costs one batch, not the list."""
    from lightsv.errors import AudioError

    emb: dict[str, object] = {}
    bad: dict[str, str] = {}
    step = batch_size * 8
    for start in _progress(list(range(0, len(files), step)), desc="embedding"):
        chunk = files[start : start + step]
        try:
            emb.update(zip(chunk, v.embed_many([root / f for f in chunk], batch_size=batch_size), strict=True))
        except AudioError:
            for f in chunk:
                try:
                    emb[f] = v.embed(root / f)
                except AudioError as err:
                    bad[f] = str(err)
    return emb, bad


def _run_score(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    import numpy as np

    from lightsv import metrics
    from lightsv.trials import read_trials

    _writable(args.out, args.plot, args.calibrate)
    trials = read_trials(args.trials)
    root = Path(args.wav_root)
    files = sorted({p for t in trials for p in (t.enroll, t.test)})
    missing = [f for f in files if not (root / f).is_file()]
    if missing and not args.skip_bad:
        raise LightsvError(
            f"{len(missing)} of {len(files)} files in {args.trials} are missing under {root}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    v = _verifier(args)
    if args.calibrate and v.model is None:
        raise ConfigError("--calibrate writes a calibrated checkpoint: score a .pt model on the torch backend")
    emb, bad = _embed_all(v, root, [f for f in files if f not in set(missing)], args.batch_size)
    bad.update({f: f"{root / f}: no such file" for f in missing})
    if bad and not args.skip_bad:
        raise LightsvError(
            f"{len(bad)} of {len(files)} clips in {args.trials} cannot be used (--skip-bad scores the rest): "
            + "; ".join(bad[f] for f in sorted(bad))
        )
    kept = [t for t in trials if t.enroll not in bad and t.test not in bad]
    if bad:
        print(
            f"{PROG}: skipped {len(bad)} bad clip(s) and the {len(trials) - len(kept)} trial(s) using them: "
            + "; ".join(bad[f] for f in sorted(bad)),
            file=sys.stderr,
        )
    labels, pairs = np.array([t.label for t in kept]), [(t.enroll, t.test) for t in kept]
    scores = np.array([float(emb[e] @ emb[t]) for e, t in pairs])
    result = {
        "eer": metrics.eer(scores, labels),
        "min_dcf": metrics.min_dcf(scores, labels, p_target=0.01),
        "min_dcf_005": metrics.min_dcf(scores, labels, p_target=0.05),
        "eer_threshold": metrics.eer_threshold(scores, labels),
        "n_target": int(labels.sum()),
        "n_nontarget": int(len(labels) - labels.sum()),
        "n_files": len(files) - len(bad),
        "skipped_clips": sorted(bad),
        "skipped_trials": len(trials) - len(kept),
        "model_id": v.model_id,
    }
    try:
        if args.out:
            Path(args.out).write_text(
                "".join(
                    f"{e} {t} {s:.6f} {'target' if y else 'nontarget'}\n"
                    for (e, t), s, y in zip(pairs, scores, labels, strict=True)
                )
            )
        if args.calibrate:
            from lightsv.calibrate import DEFAULT_FARS, calibration, resolvable, write_calibration

            fars = [far for far in DEFAULT_FARS if resolvable(far, result["n_nontarget"])]
            for far in sorted(set(DEFAULT_FARS) - set(fars)):
                print(
                    f"{PROG}: warning: no threshold at far={far:g}: {result['n_nontarget']} non-target trials "
                    f"cannot resolve it (that needs {int(np.ceil(1 / far))})",
                    file=sys.stderr,
                )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cal = calibration(scores, labels, fars=fars, trials=Path(args.trials).name)
            for warning in caught:
                print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
            write_calibration(v.source, cal, out=args.calibrate)
        if args.plot:
            from lightsv.plots import det_plot

            det_plot({Path(v.source).name: (scores, labels)}, args.plot, title=Path(args.trials).name)
    except OSError as err:
        raise LightsvError(f"cannot write {err.filename}: {err.strerror}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{len(labels)} trials ({result['n_target']} target, {result['n_nontarget']} non-target), "
            f"{result['n_files']} files\nEER {result['eer']:.2f} % (threshold {result['eer_threshold']:.4f})\n"
            f"minDCF {result['min_dcf']:.4f} (p_target 0.01), {result['min_dcf_005']:.4f} (p_target 0.05)"
        )
    return 0


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG", help="recipe config (YAML), e.g. recipes/voxceleb/conf/default.yaml"
    )
    parser.add_argument("out_dir", nargs="?", metavar="OUT_DIR", help="experiment folder (default: exp/<config name>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")


def _run_train(args: argparse.Namespace) -> int:
    from lightsv.train.cli import main

    argv = ["train", args.config, *([args.out_dir] if args.out_dir else [])]
    argv += [a for o in args.overrides for a in ("--set", o)] + (["--no-resume"] if args.no_resume else [])
    return main(argv)


def _add_export(parser: argparse.ArgumentParser) -> None:
    from lightsv.edge.cli import add_arguments

    add_arguments(parser)


def _run_export(args: argparse.Namespace) -> int:
    from lightsv.edge.cli import run

    return run(args)


def _add_import(parser: argparse.ArgumentParser) -> None:
    from lightsv.importers.cli import add_arguments

    add_arguments(parser)


def _run_import(args: argparse.Namespace) -> int:
    from lightsv.importers.cli import run

    return run(args)


def _add_spoof_score(parser: argparse.ArgumentParser) -> None:
    from lightsv.spoof.cli import add_arguments

    add_arguments(parser)


def _run_spoof_score(args: argparse.Namespace) -> int:
    from lightsv.spoof.cli import run

    return run(args)


# name -> (help, add arguments, run); a new subcommand is two functions and one entry here.
COMMANDS = {
    "profile": (
        "parameters, MACs per second, peak memory and latency of models, plain and with the transformation module",
        _add_profile,
        _run_profile,
    ),
    "demo": (
        "enroll the bundled example speakers and verify their held-out clips against each of them",
        _add_demo,
        _run_demo,
    ),
    "enroll": ("add clips of a speaker to an enrollment database", _add_enroll, _run_enroll),
    "verify": ("score a clip against an enrolled speaker and decide", _add_verify, _run_verify),
    "identify": ("the enrolled speakers best matching a clip; does the best pass", _add_identify, _run_identify),
    "list": ("list the speakers of an enrollment database", _add_list, _run_list),
    "delete": ("remove a speaker from an enrollment database", _add_delete, _run_delete),
    "score": (
        "EER and minDCF of a model on a trial list, with optional scores file and DET plot",
        _add_score,
        _run_score,
    ),
    "spoof-score": (
        "EER and t-DCF (2019, 2021) of a countermeasure over a spoofing protocol",
        _add_spoof_score,
        _run_spoof_score,
    ),
    "train": ("train a model with the VoxCeleb recipe (see recipes/voxceleb)", _add_train, _run_train),
    "export": (
        "export a model to one ONNX file (waveform in, embedding out; optionally int8 or for sherpa-onnx)",
        _add_export,
        _run_export,
    ),
    "import": (
        "convert a SpeechBrain, WeSpeaker or 3D-Speaker model into a lightsv checkpoint (front-end included)",
        _add_import,
        _run_import,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Lightweight on-device speaker verification.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightsv")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def _fail(message: str) -> int:
    # One line, whatever the message (YAML errors span several).
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        sys.stdout.flush()
    except SystemExit as exit_:
        # argparse has already printed usage or help; hand back its code instead of exiting.
        return exit_.code if isinstance(exit_.code, int) else 2
    except BrokenPipeError:  # help or version into a closed pipe
        return _closed_pipe()
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows up here for output still in the buffer
        return code
    except USER_ERRORS as err:
        return _fail(str(err))
    except ModuleNotFoundError as err:
        # Without torch (the onnx-only install) the torch-backed commands end here, not in a traceback.
        if err.name is None or err.name.startswith("lightsv"):
            raise
        if err.name.split(".")[0] == "torch":
            return _fail(
                f"'{PROG} {args.command}' needs torch, which is not installed here: "
                "pip install -c constraints.txt lightsv (the full install); enrolling, verifying and scoring "
                "run without it (--backend onnx)"
            )
        return _fail(f"'{PROG} {args.command}' needs {err.name}, which is not installed here: pip install {err.name}")
    except KeyboardInterrupt:
        return _fail("interrupted")
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader went away (`| head`): stop quietly, as cat and grep do."""
    import os

    # Python would flush stdout again at exit and report the broken pipe there; point it at devnull.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a process killed by the closed pipe reports
