#!/usr/bin/env bash
# VoxCeleb-layout speaker-verification recipe, stage-gated like WeSpeaker:
#   1 data lists + teacher cache, 2 train, 3 large-margin fine-tune, 4 evaluate + DET plot, 5 export,
#   6 AS-norm cohort.
# Usage: bash run.sh [--stage N] [--stop_stage M] [--config conf/x.yaml] [--exp DIR] [--nproc P] [--dest FILE]
set -euo pipefail
cd "$(dirname "$0")"

stage=1
stop_stage=6
config=conf/default.yaml
shared=../../../shared/data              # speech/ and spoof/ corpora
datadir=../../exp/voxceleb/data          # lists the configs read (../../exp is git-ignored)
exp=                                     # default: ../../exp/voxceleb/<config name>
nproc=1                                  # processes (torchrun) for training and evaluation
dest=                                    # stage 5 copies the selected model here too
trials=$shared/speech/trials_dev.txt     # stages 5 and 6 calibrate the decision thresholds on these trials
min_seconds=0.5                          # stage 5: shortest clip the exported model accepts
trials_root=$shared/speech/wav
overrides=()                             # --set key=value, passed to every lightsv.train call

. ../tools/parse_options.sh
exp=${exp:-../../exp/voxceleb/$(basename "$config" .yaml)}
mkdir -p "$exp" "$datadir"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the configs set torch's threads; keep BLAS to one as well

. ../tools/launch.sh  # launch: the trainer, under torchrun when nproc > 1

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  echo "stage 1: unlabeled clip list and teacher cache"
  # spoof clips of the train split whose speaker is not a dev speaker of the speech corpus (no dev
  # voice may reach training); its WORLD clips already are labelled training clips
  spoof=$(cd "$shared" && pwd)
  awk -F, -v root="$spoof" 'NR == FNR { if ($2 == "dev") dev[$1] = 1; next }
       FNR > 1 && $5 == "train" && !($2 in dev) && $1 !~ /^speech\// { print root "/" $1 }' \
      "$shared/speech/splits.csv" "$shared/spoof/protocol.csv" > "$datadir/unlabeled.lst"
  echo "$(wc -l < "$datadir/unlabeled.lst") unlabeled clips in $datadir/unlabeled.lst"
  # the dev lists pooled, for configs that select the model on all of them (gen2.yaml)
  cat "$shared"/speech/trials_dev.txt "$shared"/speech/trials_dev_ocean.txt "$shared"/speech/trials_dev_words.txt \
      > "$datadir/trials_dev_all.txt"
  python -m lightsv.train teacher "$config" "${overrides[@]}"
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  echo "stage 2: train into $exp"
  launch train "$config" "$exp" "${overrides[@]}"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  echo "stage 3: large-margin fine-tuning into $exp/finetune"
  launch finetune "$config" "$exp" "${overrides[@]}"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  echo "stage 4: evaluation and DET plots"
  for model in "$exp/model.pt" "$exp/finetune/model.pt"; do
    [ -f "$model" ] || continue
    name=train; [ "$model" = "$exp/model.pt" ] || name=finetune
    out="$exp/eval/$name"
    launch evaluate "$config" "$model" --out "$out" "${overrides[@]}"
    echo "results: $out/results.json, DET plot: $out/det.png"
  done
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  echo "stage 5: export the model with the lower dev EER (float16 weights) and calibrate its thresholds"
  python -m lightsv.train export "$exp" "$exp/final.pt" --half --min-seconds "$min_seconds"
  # decision thresholds at the EER point and at false-accept rates of 1 % and 0.1 %, stored in the model
  lightsv score "$trials" --wav-root "$trials_root" --model "$exp/final.pt" --calibrate "$exp/final.pt" \
      --json --plot "$exp/final_det.png" > "$exp/final_score.json"
  cat "$exp/final_score.json"
  [ -z "$dest" ] || { mkdir -p "$(dirname "$dest")"; cp "$exp/final.pt" "$dest"; echo "copied to $dest"; }
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  echo "stage 6: AS-norm cohort (training speakers' mean embeddings) with thresholds for AS-norm scores"
  python local/make_cohort.py --model "$exp/final.pt" --speech "$shared/speech" --trials "$trials" \
      --wav-root "$trials_root" --out "$exp/final.cohort.npz"
  [ -z "$dest" ] || { cp "$exp/final.cohort.npz" "$(dirname "$dest")/cohort.npz"; echo "copied to $(dirname "$dest")/cohort.npz"; }
fi
