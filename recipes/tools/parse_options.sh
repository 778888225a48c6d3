# Sourced by the recipes' run.sh after their defaults: `--name value` sets an existing variable `name`
# (an unknown one is an error), `--set key=value` appends to the `overrides` array for lightsv.train.
while [ $# -gt 0 ]; do
  case "$1" in
    --set) overrides+=(--set "$2"); shift 2 ;;
    --*) name=${1#--}; [ -n "${!name+x}" ] || { echo "run.sh: unknown option $1" >&2; exit 2; }
         printf -v "$name" '%s' "$2"; shift 2 ;;
    *) echo "run.sh: unexpected argument $1" >&2; exit 2 ;;
  esac
done
