# Sourced by the recipes' run.sh: `launch ARGS` runs `python -m lightsv.train ARGS`, under torchrun
# when $nproc asks for more than one process.
launch() {
  if [ "$nproc" -gt 1 ]; then
    python -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m lightsv.train "$@"
  else
    python -m lightsv.train "$@"
  fi
}
