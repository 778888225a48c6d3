"""Parameter-efficient tuning of large frozen encoders, through `lightsv.tuners` (one mechanism).

Every method here wraps a layer of an existing model (the original kept as `base_layer`), is recorded
on the model (`model.tuners`) and so replays when a checkpoint is loaded:

- `adapters.apply(model, kind="bottleneck"|"conformer", placement="pfeiffer"|"houlsby",
  mode="parallel"|"sequential", reduction=R)`: residual adapters with a zero-initialised output layer;
- `prompts.apply_prompts(model, length=N)`: deep prompt tuning (N learned tokens at every layer);
- `prompts.apply_prefix(model, length=N)`: prefix tuning (N learned keys and values per attention);
- `lora.apply(model, r=4, alpha=8, targets=["q", "v"])`: LoRA, by peft itself.

Targets are regular expressions on module names, or the names of sites the model declares in its
`tuner_sites` (e.g. `q`, `v`, `ffn`, `layer` on `lightsv.ssl` models). `freeze(model)` leaves only
tuner (and head) parameters trainable; `merge(model)` folds the linear tuners (LoRA) into their base.
Nothing here imports peft or transformers until a LoRA is applied.
"""

from lightsv.peft import adapters, lora, prompts
from lightsv.peft.tuning import Tuner, freeze, merge, resolve_targets, tuner_parameters

__all__ = ["Tuner", "adapters", "freeze", "lora", "merge", "prompts", "resolve_targets", "tuner_parameters"]
