#!/usr/bin/env bash
# Spoofing-countermeasure recipe (bona fide / spoof), stage-gated like recipes/voxceleb:
#   0 protocol with the speech corpus's real recordings added as bona fide (data/protocol.csv, read by
#   conf/side.yaml and conf/cnn.yaml), 1 protocol summary, 2 train, 3 evaluate (EER, t-DCF 2019/2021
#   overall and per system, DET plot), 4 export (LoRA merged into the encoder, float16 weights).
# Usage: bash run.sh [--stage N] [--stop_stage M] [--config conf/x.yaml] [--exp DIR] [--nproc P] [--set key=value]
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=4
shared=../../../shared/data              # spoof/ and speech/ corpora
config=conf/lora.yaml
exp=                                     # default: ../../exp/spoof/<config name>
nproc=1                                  # processes (torchrun) for training
overrides=()                             # --set key=value, passed to every lightsv.train call

. ../tools/parse_options.sh
exp=${exp:-../../exp/spoof/$(basename "$config" .yaml)}
mkdir -p "$exp"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

. ../tools/launch.sh  # launch: the trainer, under torchrun when nproc > 1

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  echo "stage 0: data/protocol.csv (the spoof set's protocol + speech-corpus recordings as bona fide)"
  mkdir -p data
  python local/make_protocol.py "$shared" data/protocol.csv
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  echo "stage 1: protocol summary"
  python -m lightsv.spoof "$config" "${overrides[@]}"
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  echo "stage 2: train into $exp"
  launch train "$config" "$exp" "${overrides[@]}"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  echo "stage 3: dev evaluation (EER, t-DCF) and DET plot"
  python -m lightsv.train evaluate "$config" "$exp/model.pt" --out "$exp/eval" "${overrides[@]}"
  echo "results: $exp/eval/results.{json,md}, DET plot: $exp/eval/det.png"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  echo "stage 4: export (LoRA merged into its base weights, float16)"
  python -m lightsv.train export "$exp" "$exp/final.pt" --half
fi
