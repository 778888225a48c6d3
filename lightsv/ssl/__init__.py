"""Self-supervised and spectrogram transformers as lightsv models: transformers' Wav2Vec2Model and
ASTModel behind a light back-end head, with the sites where tuners attach (`lightsv.peft`).

`lightsv.build_model("ssl", size="xlsr_300m")` builds a named size with random weights from its
config; `pretrained="DIR"` loads a local transformers checkpoint instead (never downloads).
transformers is imported only when such a model is built.
"""

from lightsv.ssl.frontends import SIZES, Family, Size
from lightsv.ssl.heads import AttentiveHead, GraphHead
from lightsv.ssl.model import SSLConfig, SSLModel, ssl

__all__ = ["SIZES", "AttentiveHead", "Family", "GraphHead", "SSLConfig", "SSLModel", "Size", "ssl"]
