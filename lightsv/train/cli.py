"""Train, fine-tune, evaluate, average and export models from one YAML config.

`python -m lightsv.train COMMAND ...` (and `lightsv train`): speaker models, or countermeasures when
the config has a `spoof:` section.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightsv.checkpoint import average_models, load_model, save_model
from lightsv.errors import ConfigError, LightsvError
from lightsv.peft import merge
from lightsv.plots import det_plot
from lightsv.spoof.data import entries as spoof_entries
from lightsv.spoof.evaluate import asv_scores, evaluate_cm
from lightsv.train.config import TrainConfig, load_config
from lightsv.train.distributed import setup
from lightsv.train.evaluation import evaluate
from lightsv.train.loop import teacher_cache, train


def export(
    exp_dir: str | os.PathLike, dest: str | os.PathLike, half: bool = False, min_seconds: float | None = None
) -> Path:
    """Copy the model with the lowest dev EER of `exp_dir` (trained or fine-tuned) to `dest`;
    `half` stores its weights as float16 (the shipped size); `min_seconds` is the shortest clip
    the Verifier will accept with it."""
    exp_dir = Path(exp_dir)
    candidates = []
    for sub in (exp_dir, exp_dir / "finetune"):
        if (sub / "model.pt").exists():
            result = json.loads((sub / "results.json").read_text()) if (sub / "results.json").exists() else {}
            eer = result.get("dev", {}).get("overall", {}).get("eer", math.inf)
            candidates.append((eer, sub / "model.pt"))
    if not candidates:
        raise ConfigError(f"{exp_dir}: no model.pt to export (run the training stage first)")
    eer, best = min(candidates, key=lambda x: x[0])
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    model, extra = load_model(best, return_extra=True)
    lora = any(r.get("kind") == "lora" for r in getattr(model, "tuners", []))
    if not half and min_seconds is None and not lora:
        shutil.copyfile(best, dest)
        return Path(dest)
    if min_seconds is not None:
        if not min_seconds > 0:
            raise ConfigError(f"min_seconds must be positive, got {min_seconds}")
        extra["min_seconds"] = float(min_seconds)
    # LoRA is folded into its base weights (peft's merge): the exported model runs without it
    merge(model, strict=False)
    return save_model(model, dest, half=half, **extra)


def evaluate_spoof(c: TrainConfig, model_path: str | os.PathLike, out: Path) -> dict:
    """Score a countermeasure on the dev entries of `c`: results.json, results.md (overall and per
    spoofing system: EER, t-DCF 2019 and 2021) and det.png in `out`."""
    spoof = c.spoof
    if spoof is None:
        raise ConfigError("evaluate_spoof: the config has no spoof section")
    torch.set_num_threads(c.threads)
    model = load_model(model_path)
    entries = spoof_entries(spoof, c.data.root, "dev")
    out.mkdir(parents=True, exist_ok=True)
    asv = None
    if spoof.asv is not None:
        asv_file = out / "asv_scores.json"
        if not asv_file.exists():
            asv_file.write_text(json.dumps(asv_scores(entries, spoof.asv)))
        asv = json.loads(asv_file.read_text())
    result = evaluate_cm(model, entries, c.features, c.eval.max_seconds, asv, c.eval.bootstrap, progress=True)
    scores = {k: v for k, v in result.items() if k not in ("scores", "labels")}
    (out / "results.json").write_text(json.dumps(scores, indent=2))
    det_plot({Path(model_path).name: (result["scores"], result["labels"])}, out / "det.png", title="dev")

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    o = scores["overall"]
    lines = [
        f"# {model_path} on the dev entries of {spoof.dev_protocol or spoof.protocol}",
        "",
        "| system | spoof clips | EER % | t-DCF 2019 | t-DCF 2021 |",
        "|---|---|---|---|---|",
        f"| all | {o['nontargets']} | {fmt(o['eer'])} | {fmt(o.get('t_dcf_2019'))} | {fmt(o.get('t_dcf_2021'))} |",
    ]
    for name, s in scores["systems"].items():
        lines.append(
            f"| {name} | {s['spoof']} | {fmt(s['eer'])} | {fmt(s.get('t_dcf_2019'))} | {fmt(s.get('t_dcf_2021'))} |"
        )
    lines += ["", f"{o['targets']} bona fide clips; EER 95 % interval {fmt(o.get('eer_ci95'))}."]
    if "asv" in scores:
        a = scores["asv"]
        lines.append(
            f"ASV for the t-DCF: {spoof.asv} speaker model, EER {a['eer']:.2f} % on {a['target_trials']} target / "
            f"{a['nontarget_trials']} non-target bona fide trials of dev speakers, {a['spoof_trials']} spoof trials."
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return scores


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightsv.train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides: dict[str, Any] = dict(
        action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    for name, text in (("train", "train a model"), ("finetune", "large-margin fine-tune a trained model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config")
        p.add_argument("out_dir", nargs="?", help="experiment folder (default: exp/<config name>)")
        p.add_argument("--set", dest="overrides", **overrides)
        p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p = sub.add_parser("teacher", help="build the teacher embedding cache of a config")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", **overrides)
    p = sub.add_parser("evaluate", help="score a trial list with a saved model; write JSON and a DET plot")
    p.add_argument("config")
    p.add_argument("model")
    p.add_argument("--set", dest="overrides", **overrides)
    p.add_argument("--trials", help="trial list (default: data.trials)")
    p.add_argument("--root", help="folder the trial paths are relative to (default: data.trials_root or data.root)")
    p.add_argument("--manifest", help="csv path,source for per-family results (default: data.manifest)")
    p.add_argument("--out", required=True, help="folder for results.json and det.png")
    p = sub.add_parser("average", help="average the weights of runs from one starting point (a model soup)")
    p.add_argument("dest")
    p.add_argument("models", nargs="+", help="two or more checkpoints of one model on one filterbank")
    p = sub.add_parser("export", help="copy the best model of an experiment folder")
    p.add_argument("exp_dir")
    p.add_argument("dest")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    p.add_argument("--min-seconds", type=float, help="shortest clip the verifier accepts with this model")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m lightsv.train`; `lightsv train CONFIG OUT_DIR` maps to main(["train", ...])."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export":
            print(export(args.exp_dir, args.dest, half=args.half, min_seconds=args.min_seconds))
            return 0
        if args.command == "average":
            print(average_models(args.models, args.dest))
            return 0
        config = load_config(args.config, args.overrides)
        if args.command in ("train", "finetune"):
            out_dir = args.out_dir or Path("exp") / Path(args.config).stem
            trained = train(config, out_dir, resume=not args.no_resume, stage=args.command)
            print(json.dumps(trained.results.get("dev", {}).get("overall", {}), indent=2))
        elif args.command == "teacher":
            setup(config.device)
            torch.set_num_threads(config.threads)
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
            if config.loss.distill_weight == 0 or config.loss.teacher == "online":
                why = "no distillation" if config.loss.distill_weight == 0 else "the teacher runs during training"
                print(f"{why}: there is no teacher cache to build")
                return 0
            cache = teacher_cache(config)
            print(f"{config.loss.teacher_cache}: {len(cache)} clips, {cache.windows.shape[0]} windows")
        elif config.spoof is not None:
            evaluate_spoof(config, args.model, Path(args.out))
        else:
            trials = args.trials or config.data.trials
            if not trials:
                raise ConfigError("no trial list to score: give --trials or set data.trials")
            ctx = setup(config.device)
            torch.set_num_threads(config.threads)
            model = load_model(args.model).to(ctx.device)
            result = evaluate(
                model,
                trials,
                args.root or config.data.trials_root or config.data.root,
                manifest=args.manifest or config.data.manifest,
                features=config.features,
                eval_config=config.eval,
                ctx=ctx,
                progress=True,
            )
            if ctx.main:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                scores = {k: v for k, v in result.items() if k not in ("scores", "labels")}
                (out / "results.json").write_text(json.dumps(scores, indent=2))
                det_plot(
                    {Path(args.model).name: (result["scores"], result["labels"])},
                    out / "det.png",
                    title=Path(trials).name,
                )
                print(json.dumps(scores["overall"], indent=2))
        return 0
    except (LightsvError, FileNotFoundError) as err:
        print(f"lightsv train: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.destroy_process_group()
