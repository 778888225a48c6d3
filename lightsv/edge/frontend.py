"""The filterbank as it runs inside an exported graph: frames gathered by index, a real FFT, mel, log.

:class:`lightsv.features.Fbank` folds DC removal, pre-emphasis, the window and the DFT into one
[2 x bins, 400] matrix, which is exact and simple in torch but costs 204k multiply-adds per 10 ms
frame and ships as a 0.8 MB constant. Here the same Kaldi steps run one by one on gathered frames
and the spectrum comes from ``torch.fft.rfft`` (ONNX ``DFT``), about 40x less arithmetic and no
constant beyond the 400-sample window and the mel matrix. Both styles of :class:`FbankConfig` run
here (SpeechBrain's: zero-padded centred frames, no DC removal or pre-emphasis unless configured, all
one-sided bins, decibels). Outputs equal ``Fbank``'s to float32 rounding; the parity tests hold the
exported graph to the torch path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lightsv.features import Fbank, FbankConfig, _window, finish, input_scale, mel_banks


class FftFbank(nn.Module):
    """``forward(wav[B, N], lengths[B]) -> (log-mels[B, T, n_mels], frames[B])``, like :class:`Fbank`."""

    mel: torch.Tensor
    window: torch.Tensor
    offsets: torch.Tensor

    def __init__(self, config: FbankConfig | None = None):
        super().__init__()
        self.config = c = config or FbankConfig()
        Fbank(c)  # validates the options with Fbank's messages
        self.win_length, self.hop_length = c.win_length, c.hop_length
        bank = mel_banks(c)  # [n_fft/2, n_mels]
        used = np.flatnonzero(bank.any(axis=1))
        # Only the contiguous band of bins some triangle touches enters the mel matmul.
        self.first_bin, self.last_bin = int(used.min()), int(used.max()) + 1
        self.register_buffer("mel", torch.from_numpy(bank[self.first_bin : self.last_bin]).float(), persistent=False)
        window = torch.from_numpy(_window(c, self.win_length)).float() * input_scale(c)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("offsets", torch.arange(self.win_length), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if c.centered:
            wav = nn.functional.pad(wav, (c.n_fft // 2, c.n_fft // 2))
        num_frames = (wav.shape[1] - self.win_length) // self.hop_length + 1  # a symbolic int while exporting
        starts = torch.arange(num_frames, device=wav.device) * self.hop_length
        frames = wav[:, starts[:, None] + self.offsets[None, :]]  # [B, T, win]
        if c.remove_dc:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        if c.preemphasis:
            # Kaldi pre-emphasises the first sample against itself.
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - c.preemphasis * previous
        spectrum = torch.fft.rfft(frames * self.window, n=c.n_fft, dim=-1)[..., self.first_bin : self.last_bin]
        power = spectrum.real.square() + spectrum.imag.square()
        return finish(power @ self.mel, wav, lengths, c)
