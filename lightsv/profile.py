"""Cost of a speaker model on CPU: parameters, MACs per second of audio, peak memory and latency.

Everything runs on CPU, the on-device target, with log-mel input at 100 frames per second.

MACs are counted one way everywhere (torch's FlopCounterMode, flops / 2, plus fused LSTM layers):
``macs_per_second`` is the network on log-mel features, ``fbank_macs_per_second`` the filterbank that
makes them from the waveform (its DFT and mel projection are matrix products, counted the same way),
and ``total_macs_per_second`` their sum, waveform to embedding: the figure the README's model tables
give (``benchmarks/default_model.py`` counts the same total on a real clip).
"""

import contextlib
import copy
import math
import statistics
import time
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from lightsv.errors import ConfigError

FRAMES_PER_SECOND = 100
MB = 1024 * 1024
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def _rnn_layer_flops(input_shape, weight_ih_shape, weight_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one direction of one layer, as flop_counter counts the same matmuls when decomposed.

    On CPU, nn.LSTM runs as the fused `aten.mkldnn_rnn_layer`, which flop_counter has no formula
    for, so LSTMs would count as free. Per input frame (T*B of them, whatever the layout) the
    layer does x @ W_ih^T and h @ W_hh^T, i.e. G*H*(I + H) MACs for G gates of hidden size H;
    like flop_counter's addmm formula this leaves out biases and element-wise gate math.
    """
    macs = math.prod(input_shape[:-1]) * (
        weight_ih_shape[0] * weight_ih_shape[1] + weight_hh_shape[0] * weight_hh_shape[1]
    )
    return 2 * macs


# Only ops that flop_counter lacks (nn.GRU and nn.RNN decompose into addmm, which it counts).
EXTRA_FLOP_FORMULAS = {torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops}


def fbank_macs(seconds: float, n_mels: int = 80) -> int:
    """MACs of the Kaldi-style filterbank (lightsv.features.Fbank) over ``seconds`` of 16 kHz audio."""
    from lightsv.features import Fbank, FbankConfig

    fbank = Fbank(FbankConfig(n_mels=n_mels))
    wav = torch.randn(1, max(fbank.config.win_length, round(seconds * fbank.config.sample_rate)))
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        fbank(wav)
    return counter.get_total_flops() // 2


def count_macs(model: nn.Module, feats: torch.Tensor) -> tuple[int, dict[str, int]]:
    """MACs of one forward pass over `feats` (flops / 2), total and per top-level child module."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        model(feats)
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items() if "." in name}
    by_module: dict[str, int] = {}
    for name, flops in counts.items():
        # Names are "<RootClass>.<child>...". Modules only called through a container (blocks in
        # a ModuleList) appear without the container, so sum the outermost names under each child.
        if not any(name.startswith(other + ".") for other in counts):
            child = name.split(".")[1]
            by_module[child] = by_module.get(child, 0) + flops // 2
    return counter.get_total_flops() // 2, by_module


class PeakMemory(TorchDispatchMode):
    """High-water mark of CPU tensor storage created inside the `with` block, in bytes (`.peak`).

    Each storage an op returns is counted once, from its creation until it is freed (a weakref
    on the storage). Storages of `existing` (tensors, modules' parameters and buffers) were
    alive before and count as zero, as do views of them. Kernel-internal scratch (oneDNN
    workspaces) and allocator overhead are invisible at this level and not counted.

    torch's MemTracker gives the same numbers on CPU (tests check this) but costs 5-10x more
    per op, since it updates every tracked module on each op; a GRU over 300 frames is
    thousands of ops, so that made profiling a recurrent model take minutes.
    """

    def __init__(self, *existing: torch.Tensor | nn.Module):
        super().__init__()
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = self.peak = 0
        for item in existing:
            tensors = [*item.parameters(), *item.buffers()] if isinstance(item, nn.Module) else [item]
            for t in tensors:
                self._track(t.untyped_storage(), 0)

    def _track(self, storage: torch.UntypedStorage, nbytes: int) -> None:
        key = storage._cdata

        def free(_: object, key: int = key) -> None:
            self._free(key)

        self.live[key] = (nbytes, weakref.ref(storage, free))
        self.current += nbytes

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.layout == torch.strided:
                storage = t.untyped_storage()
                if storage._cdata not in self.live:
                    self._track(storage, storage.nbytes())
        self.peak = max(self.peak, self.current)
        return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    # Put back each module's own flag, not one flag for all, in case the caller mixed them.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _num_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def inference_peak_bytes(model: nn.Module, feats: torch.Tensor) -> int:
    """Peak bytes of a no-grad forward, beyond the model's parameters, buffers and `feats`."""
    with torch.no_grad(), PeakMemory(model, feats) as tracker:
        model(feats)
    return tracker.peak


def train_peak_bytes(model: nn.Module, feats: torch.Tensor, optimizer: str = "adam") -> int:
    """Peak bytes of one training step (forward, loss, backward, optimizer step) on a copy of `model`.

    The copy keeps the caller's weights, BatchNorm statistics and grads untouched; the optimizer
    is fresh, so its state is created (and counted) inside the step, as on a first step.
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.grad = None
    opt = OPTIMIZERS[optimizer]([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with PeakMemory(model, feats) as tracker:
        # A stand-in loss: a classifier head would add parameters that are not the model's.
        model(feats).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tracker.peak


def profile(
    model: nn.Module,
    seconds: float = 3.0,
    batch: int = 1,
    threads: int = 1,
    repeats: int = 10,
    train_step: bool = True,
    optimizer: str = "adam",
    warmup: int = 2,
) -> dict:
    """Profile `model` on `seconds` of random log-mel features ([batch, 100*seconds, model.feat_dim]).

    Returns a dict with:
      params, trainable_params: parameter counts (shared tensors once).
      macs_per_second: multiply-accumulates per second of audio for one utterance, counted by
        torch's FlopCounterMode (flops / 2: matmuls and convolutions, plus fused CPU LSTM layers
        via EXTRA_FLOP_FORMULAS; element-wise ops, norms and activations are not counted).
      macs_by_module: the same per direct child of the model (children that hold MACs).
      fbank_macs_per_second, total_macs_per_second: the filterbank making the model's features from
        the waveform, counted the same way, and the sum (waveform to embedding).
      peak_memory_inference_bytes: peak live tensor storage of a no-grad forward in eval mode,
        beyond the model's parameters, buffers and input: activations and temporaries.
      peak_memory_train_bytes: the same for one training step in train mode with a fresh
        `optimizer` ("adam" or "sgd"): also gradients, saved activations and optimizer state.
        Uses batch max(batch, 2), reported as train_batch, since BatchNorm cannot train on one
        row; None if train_step is False. See PeakMemory for what neither peak includes.
      latency_ms: median wall time of a forward of the batch on `threads` torch threads over
        `repeats` runs after `warmup` runs; real_time_factor: that time / seconds of audio in it.
    """
    if seconds <= 0 or batch < 1 or threads < 1 or repeats < 1:
        raise ConfigError(
            f"profile needs seconds > 0 and batch, threads, repeats >= 1; got "
            f"seconds={seconds}, batch={batch}, threads={threads}, repeats={repeats}"
        )
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    frames = max(1, round(seconds * FRAMES_PER_SECOND))
    feat_dim = getattr(model, "feat_dim", 80)
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, frames, feat_dim, generator=generator)
    train_batch = max(batch, 2)

    with _eval_mode(model), _num_threads(threads):
        # Latency first: its warm-up also spares the slower counting passes the first-call costs.
        latency = _latency_seconds(model, feats, repeats, warmup)
        macs, macs_by_module = count_macs(model, feats[:1])
        peak_inference = inference_peak_bytes(model, feats)
        peak_train = None
        if train_step:
            train_feats = torch.randn(train_batch, frames, feat_dim, generator=generator)
            peak_train = train_peak_bytes(model, train_feats, optimizer)

    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs_per_second": macs / seconds,
        "macs_by_module": {name: n / seconds for name, n in macs_by_module.items()},
        "fbank_macs_per_second": fbank_macs(seconds, feat_dim) / seconds,
        "total_macs_per_second": (macs + fbank_macs(seconds, feat_dim)) / seconds,
        "peak_memory_inference_bytes": peak_inference,
        "peak_memory_train_bytes": peak_train,
        "train_batch": train_batch,
        "latency_ms": latency * 1000,
        "real_time_factor": latency / (seconds * batch),
        "seconds": seconds,
        "batch": batch,
        "threads": threads,
    }


def _latency_seconds(model: nn.Module, feats: torch.Tensor, repeats: int, warmup: int) -> float:
    times = []
    with torch.inference_mode():
        # The first runs pay for oneDNN primitive creation and cache warm-up, not the model.
        for _ in range(warmup):
            model(feats)
        for _ in range(repeats):
            start = time.perf_counter()
            model(feats)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ratio(row: dict, baseline: dict | None, key: str, ratio_key: str) -> float | None:
    if ratio_key in row:
        return row[ratio_key]
    if baseline is None or not baseline.get(key):
        return None
    return row[key] / baseline[key]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def with_ratios(result: dict, plain: dict) -> dict:
    """`result` plus its params, MACs and latency as ratios to the `plain` profile."""
    ratio = lambda key: result[key] / plain[key] if plain.get(key) else None  # noqa: E731
    return {
        **result,
        "params_ratio": ratio("params"),
        "macs_ratio": ratio("macs_per_second"),
        "latency_ratio": ratio("latency_ms"),
    }


def profile_variants(name: str, variants: list[dict], progress=iter, **options) -> list[dict]:
    """Profile registered model `name` plain, then behind the transformation module once per
    option dict in `variants` (kwargs of lightsv.transform.apply); rows carry ratios to plain."""
    from lightsv.models import build_model
    from lightsv.transform import apply

    # all variants are built before the slow profiling starts, so bad options fail fast
    models: list[tuple[dict | None, nn.Module]] = [(None, build_model(name))]
    models += [(v, apply(build_model(name), **v)) for v in variants]
    rows, plain = [], None
    for variant, model in progress(models):
        result = profile(model, **options)
        plain = plain or result
        label = name
        if variant:
            label += (
                f" K={variant['subsets']} {variant.get('fusion', 'sum')}{' shared' if variant.get('share') else ''}"
            )
        rows.append(
            {
                "name": label,
                "model": name,
                "subsets": None,
                "share": None,
                "fusion": None,
                **(variant or {}),
                **with_ratios(result, plain),
            }
        )
    return rows


def profile_checkpoint(path, **options) -> dict:
    """profile() of the model in a checkpoint file, as a table row named after the file."""
    from pathlib import Path

    from lightsv.checkpoint import load_model

    model = load_model(path)
    name = getattr(model, "model_name", type(model).__name__)
    return {"name": Path(path).name, "model": name, "checkpoint": str(path), **profile(model, **options)}


def profile_table(rows: list[dict], baseline: dict | None = None) -> str:
    """A fixed-width table of profile() results; each row also needs a "name". "M MACs/s" is the
    network on features, "+fbank" the filterbank before it (see the module docstring).

    The ratio columns show a row's own params_ratio / macs_ratio / latency_ratio if it has them,
    otherwise the ratio to `baseline` (a row), and are left out when no row has either.
    """
    with_ratios = baseline is not None or any("params_ratio" in r or "macs_ratio" in r for r in rows)
    width = max([len("model"), *(len(str(r["name"])) for r in rows)])
    header = (
        f"{'model':<{width}} {'params':>12} {'M MACs/s':>10} {'+fbank':>7} {'inf MB':>8} {'train MB':>9} "
        f"{'latency ms':>10}"
    )
    if with_ratios:
        header += f" {'params x':>8} {'MACs x':>7} {'latency x':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        inference, train = r.get("peak_memory_inference_bytes"), r.get("peak_memory_train_bytes")
        line = (
            f"{r['name']:<{width}} {r['params']:>12,} {r['macs_per_second'] / 1e6:>10.1f} "
            f"{_fmt(None if 'fbank_macs_per_second' not in r else r['fbank_macs_per_second'] / 1e6, '.1f'):>7} "
            f"{_fmt(None if inference is None else inference / MB, '.2f'):>8} "
            f"{_fmt(None if train is None else train / MB, '.2f'):>9} {r['latency_ms']:>10.2f}"
        )
        if with_ratios:
            line += (
                f" {_fmt(_ratio(r, baseline, 'params', 'params_ratio'), '.3f'):>8}"
                f" {_fmt(_ratio(r, baseline, 'macs_per_second', 'macs_ratio'), '.3f'):>7}"
                f" {_fmt(_ratio(r, baseline, 'latency_ms', 'latency_ratio'), '.3f'):>9}"
            )
        lines.append(line)
    return "\n".join(lines)
