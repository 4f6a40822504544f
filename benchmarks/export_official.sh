#!/usr/bin/env bash
# Export the official model files, at the commits the parity fixtures pin (tests/fixtures/parity/*.json), into
# benchmarks/official/ for side_by_side.py. The official code is never committed here (.gitignore).
#
# usage: benchmarks/export_official.sh CLONES_DIR
#   CLONES_DIR holds git clones (or bare mirrors) named deit, AS-MLP, Hire-Wave-MLP.pytorch, Strip_MLP, RepMLP,
#   CycleMLP of facebookresearch/deit, svip-lab/AS-MLP, ggjy/Hire-Wave-MLP.pytorch, Med-Process/Strip_MLP,
#   DingXiaoH/RepMLP, ShoufaChen/CycleMLP (a folder of symlinks to bare mirrors will do).
set -euo pipefail
src=${1:?usage: $0 CLONES_DIR}
out=$(dirname "$0")/official
mkdir -p "$out/asmlp"
show() {  # repo commit file destination
  local dir="$src/$1"
  [ -d "$dir/.git" ] && dir="$dir/.git"
  [ -d "$dir/repo" ] && dir="$dir/repo"
  git --git-dir="$dir" show "$2:$3" > "$out/$4"
}
show deit 7e160fe resmlp_models.py resmlp_models.py
show AS-MLP dd1eb4f models/as_mlp.py asmlp/as_mlp.py
show AS-MLP dd1eb4f models/shift_cuda.py asmlp/shift_cuda.py
touch "$out/asmlp/__init__.py"
show Hire-Wave-MLP.pytorch 7ef7ddd mlp_based/hire_mlp.py hire_mlp.py
show Hire-Wave-MLP.pytorch 7ef7ddd mlp_based/wave_mlp.py wave_mlp.py
show Strip_MLP 492d705 models/strip_mlp.py strip_mlp.py
show RepMLP 3eff13f repmlpnet.py repmlpnet.py
show RepMLP 4b3e347 repmlp_resnet.py repmlp_resnet.py
show RepMLP 4b3e347 repmlp_blocks.py repmlp_blocks.py
show RepMLP 4b3e347 repmlp.py repmlp.py
show CycleMLP 4e062a0 cycle_mlp.py cycle_mlp.py
echo "official files in $out"
