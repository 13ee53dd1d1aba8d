#!/usr/bin/env bash
# Golden set for the kdtemp move/rename refactor.
#
#   bash make_golden.sh CODE_ROOT OUT_DIR
#
# Runs nine tiny MNIST-1D (and one tiny synthetic-image) experiments (12 sweep and 11 report calls) with
# PYTHONPATH=CODE_ROOT and cwd=OUT_DIR, leaving results under OUT_DIR/runs, the
# stdout of every `report` in OUT_DIR/reports/<name>.txt and of every `status`
# in OUT_DIR/reports/<name>.status.txt. Everything else the CLI prints goes to
# OUT_DIR/logs/. Compare two outputs with compare.py BEFORE AFTER.
#
# The MNIST-1D cache is shared between outputs (GOLDEN_DATA, default
# ${TMPDIR:-/tmp}/kdtemp-golden/data) so it is generated once. Config paths are relative to
# OUT_DIR (or shared, see SHARED_DIR), so no OUT_DIR path is hashed into any run id.
# About 6-7 minutes on the 2 shared CPU cores (one torch thread per process).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 CODE_ROOT OUT_DIR" >&2
    exit 2
fi
CODE_ROOT=$(cd "$1" && pwd)
OUT_DIR=$(mkdir -p "$2" && cd "$2" && pwd)
DATA_ROOT=${GOLDEN_DATA:-${TMPDIR:-/tmp}/kdtemp-golden/data}
# The imported teacher checkpoint (experiment optim-import) lives at a fixed path shared by every
# output: teacher/model.pt records the checkpoint's resolved absolute path, and run ids hash
# teacher/model.pt, so a path under OUT_DIR would give every output different run ids.
SHARED_DIR=${GOLDEN_SHARED:-${TMPDIR:-/tmp}/kdtemp-golden/shared}
PYTHON=${PYTHON:-python}
mkdir -p "$DATA_ROOT" "$SHARED_DIR"

# A fresh output directory: refuse to wipe one this script did not make.
if [[ -n "$(ls -A "$OUT_DIR")" ]]; then
    if [[ -f "$OUT_DIR/.golden-out" ]]; then
        find "$OUT_DIR" -mindepth 1 -delete
    else
        echo "error: $OUT_DIR is not empty and is not a previous golden output (.golden-out missing)" >&2
        exit 2
    fi
fi
touch "$OUT_DIR/.golden-out"
mkdir -p "$OUT_DIR/configs" "$OUT_DIR/reports" "$OUT_DIR/logs" "$OUT_DIR/data"

export PYTHONPATH="$CODE_ROOT"
export COLUMNS=200 LINES=50 NO_COLOR=1 TERM=dumb PYTHONHASHSEED=0 TZ=UTC LC_ALL=C.UTF-8
# One CPU thread per process (override with GOLDEN_THREADS): the cores are shared, and two OpenMP
# threads competing with another job slow the tiny runs down several times; a fixed count also keeps
# the numbers independent of how many threads torch would pick.
export OMP_NUM_THREADS=${GOLDEN_THREADS:-1} MKL_NUM_THREADS=${GOLDEN_THREADS:-1}
unset FORCE_COLOR CLICOLOR_FORCE || true
cd "$OUT_DIR"

RESOLVED=$("$PYTHON" -c "import kdtemp; print(kdtemp.__file__)")
case "$RESOLVED" in
    "$CODE_ROOT"/*) ;;
    *) echo "error: kdtemp resolves to $RESOLVED, not under $CODE_ROOT" >&2; exit 2 ;;
esac
{
    echo "code_root: $CODE_ROOT"
    echo "kdtemp: $RESOLVED"
    "$PYTHON" -c "import torch, sys; print('torch:', torch.__version__, 'threads:', torch.get_num_threads()); print('python:', sys.version.split()[0])"
} > logs/environment.txt
cat logs/environment.txt

kd() {  # kd LOGNAME ARGS...: one CLI call, its output in logs/LOGNAME.log (stderr appended)
    local log=$1; shift
    "$PYTHON" -m kdtemp "$@" > "logs/$log.log" 2>&1 || {
        local rc=$?
        echo "error: kdtemp $* exited $rc; see $OUT_DIR/logs/$log.log" >&2
        tail -20 "logs/$log.log" >&2
        return "$rc"
    }
}

report() {  # report NAME [ARGS...]: stdout to reports/NAME.txt, stderr to logs
    local name=$1; shift
    "$PYTHON" -m kdtemp report "$@" > "reports/$name.txt" 2> "logs/report-$name.err" || {
        local rc=$?
        echo "error: kdtemp report $* exited $rc; see $OUT_DIR/logs/report-$name.err" >&2
        return "$rc"
    }
}

status() {  # status EXP [ARGS...]
    local exp=$1; shift
    "$PYTHON" -m kdtemp status -c "configs/$exp.yaml" "$@" > "reports/$exp.status.txt" 2> "logs/status-$exp.err" || {
        local rc=$?
        echo "error: kdtemp status -c configs/$exp.yaml exited $rc; see $OUT_DIR/logs/status-$exp.err" >&2
        return "$rc"
    }
}

SECONDS_START=$SECONDS
experiment() {  # experiment NAME: train-teacher, sweep, report, status of configs/NAME.yaml
    local exp=$1
    local t0=$SECONDS
    kd "$exp-train-teacher" train-teacher -c "configs/$exp.yaml"
    kd "$exp-sweep" sweep -c "configs/$exp.yaml"
    report "$exp" -c "configs/$exp.yaml"
    status "$exp"
    echo "  $exp: $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# User code, written byte-identically on every run (run ids hash the sources).
# ---------------------------------------------------------------------------------------------
cat > mysched.py <<'PYEOF'
"""A user's own temperature schedules (function form and class form)."""
import math


def warm_restart(t0, progress, epoch, period, floor=1.0):
    """Cosine from t0 down to floor every `period` epochs, the restarts fading as training goes on."""
    phase = (epoch % period) / period
    return floor + (t0 - floor) * (1 - progress / 2) * (1 + math.cos(math.pi * phase)) / 2


class Halving:
    """Class form: built once per run with its params; halves T every `every` calls."""

    def __init__(self, every):
        self.every = every
        self.calls = 0

    def temperature(self, t0, progress, epoch):
        self.calls += 1
        return t0 * 0.5 ** ((self.calls - 1) // self.every)
PYEOF

cat > mymethod.py <<'PYEOF'
"""A user's own KD method: a logit-L2 penalty on the runs that train with it."""
import torch
from kdtemp.methods import KDMethod, Terms


class LogitPenalty(KDMethod):
    """WEIGHT * the batch mean of the sum of squared student logits, for the runs that name it."""

    name = "logit-l2"

    def __init__(self, members, group):
        super().__init__(members, group)
        self.weight = torch.tensor([WEIGHT if self.uses(m) else 0.0 for m in self.members], device=group.device)

    def terms(self, step):
        squared = step.logits.pow(2).sum(-1).mean(-1)
        return Terms(added={"logit_l2": self.weight * squared}, logged={"logit_l2": squared})

    def row_fields(self, k, means):
        return {"train_logit_l2": means["logit_l2"]} if self.uses(self.members[k]) else {}


WEIGHT = 0.05
PYEOF

cat > mymodels.py <<'PYEOF'
"""A user's own student network (module:callable arch)."""
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width, num_classes, input_shape):
        super().__init__()
        channels, length = input_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(channels * length, width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
PYEOF

# A tiny synthetic image data set (4 classes of 1x16x16 images) for the ResNet student: the CIFAR
# ResNets need (C, H, W) inputs, MNIST-1D is (1, 40), and no Fashion-MNIST copy is on this machine.
"$PYTHON" - <<'PYEOF'
import numpy as np
rng = np.random.default_rng(0)
templates = rng.normal(size=(4, 1, 16, 16)).astype(np.float32)
def split(n):
    y = rng.integers(0, 4, size=n)
    x = (templates[y] + 1.5 * rng.normal(size=(n, 1, 16, 16))).astype(np.float32)
    return x, y.astype(np.int64)
x_train, y_train = split(384)
x_test, y_test = split(128)
np.savez("data/tiny-images.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
         classes=np.array(["a", "b", "c", "d"]))
PYEOF

# ---------------------------------------------------------------------------------------------
# Experiment configs. Common: MNIST-1D from the shared cache, batch 256, a small CNN teacher.
# ---------------------------------------------------------------------------------------------
common() {  # common NAME: the shared top of a config
    cat <<EOF
name: $1
runs_dir: runs
device: cpu
data: {root: $DATA_ROOT, batch_size: 256}
EOF
}
TEACHER='teacher: {arch: cnn, channels: [16, 32], hidden: 64, epochs: 3}'

# 1. MLP student x every scheduled (built-in, non-learned) temperature: constant, linear (down, and
#    up with a t_min clamp), exp (gamma; final_ratio; gamma at step granularity = revision 2),
#    cosine, step (default milestones; custom at step granularity), stages (absolute, once per seed).
{ common mlp-schedules; echo "$TEACHER"; cat <<'EOF'
student: {arch: mlp, hidden: [32], epochs: 3}
kd:
  temperatures: [4]
  seeds: [0, 1]
  schedules:
    - constant
    - {name: linear, t_end: 1}
    - {name: linear, t_end: 8, t_min: 5, label: linear-up-clamped}
    - {name: exp, gamma: 0.8}
    - {name: exp, final_ratio: 0.25, label: exp-ratio}
    - {name: exp, gamma: 0.7, granularity: step, label: exp-step}
    - cosine
    - step
    - {name: step, milestones: [1], factor: 0.25, granularity: step, label: step-custom}
    - stages
EOF
} > configs/mlp-schedules.yaml

# 2. CNN (Conv1d) student with dropout: CTKD (learnable T, plain and regularised) and logit-std,
#    beside constant.
{ common cnn-ctkd-logitstd; echo "$TEACHER"; cat <<'EOF'
student: {arch: cnn, channels: [8], hidden: 16, dropout: 0.2, epochs: 2}
kd:
  temperatures: [4]
  seeds: [0, 1]
  schedules:
    - constant
    - {name: learnable, curriculum_epochs: 2}
    - {name: learnable, curriculum_epochs: 2, penalty: 0.1, t_target: 4, label: ctkd-reg}
    - logit-std
EOF
} > configs/cnn-ctkd-logitstd.yaml

# 3. ResNet (CIFAR resnet8) student, Conv2d CNN teacher, on a user's tensors file, with augmentation.
cat > configs/resnet-images.yaml <<'EOF'
name: resnet-images
runs_dir: runs
device: cpu
data: {dataset: tensors, root: data/tiny-images.npz, batch_size: 64, augment: true}
teacher: {arch: cnn, channels: [8, 16], hidden: 32, epochs: 2}
student: {arch: resnet8, epochs: 1}
kd:
  temperatures: [4]
  seeds: [0]
EOF

# 4. FitNets hints. First sweep: default penultimate layers (linear regressor), MLP student.
#    Second sweep (HINTS_CONV): CNN student, named conv layers (1x1-conv regressor), CTKD beside
#    constant. Two settings in one experiment: two tables in one report.
{ common hints; echo "$TEACHER"; cat <<'EOF'
student: {arch: mlp, hidden: [48], epochs: 2}
kd:
  temperatures: [1, 4]
  seeds: [0, 1]
  feature_weight: 0.5
EOF
} > configs/hints.yaml
HINTS_CONV=(--seeds 0 --temps 4
            --set 'student={arch: cnn, channels: [8, 16], hidden: 16, dropout: 0.0, epochs: 2}'
            --set 'kd.feature_weight=1.0'
            --set 'kd.feature_layers={student: features.7, teacher: features.7}'
            --set 'kd.schedules=[constant, {name: learnable, curriculum_epochs: 2}]')

# 5. Teacher ensemble (CNN + MLP), weighted soft targets, plain KD and logit-std.
{ common ensemble-weighted; cat <<'EOF'
teachers:
  - {arch: cnn, channels: [16, 32], hidden: 64, epochs: 3}
  - {arch: mlp, hidden: [64], epochs: 3}
student: {arch: mlp, hidden: [32], epochs: 2}
kd:
  temperatures: [2, 4]
  seeds: [0, 1]
  ensemble: weighted
  teacher_weights: [2, 1]
  schedules: [constant, logit-std]
EOF
} > configs/ensemble-weighted.yaml

# 6. Born-again generations (3), MLP student, constant and linear.
{ common born-again; echo "$TEACHER"; cat <<'EOF'
student: {arch: mlp, hidden: [32], epochs: 2}
kd:
  temperatures: [4]
  seeds: [0, 1]
  schedules: [constant, linear]
  generations: 3
EOF
} > configs/born-again.yaml

# 7. User code: a user's KD method (kd.methods), a user's schedules (function and class form),
#    a user's student arch (module:callable).
{ common user-code; echo "$TEACHER"; cat <<'EOF'
student: {arch: "mymodels:TinyNet", kwargs: {width: 24}, epochs: 3}
kd:
  temperatures: [4]
  seeds: [0, 1]
  methods: ["mymethod:LogitPenalty"]
  schedules:
    - constant
    - {name: "mysched:warm_restart", period: 2}
    - {name: "mysched:Halving", every: 10, granularity: step, label: halving}
EOF
} > configs/user-code.yaml

# 8. Optimiser/LR variants (adamw, multistep, clipping, own batch size, alpha 0.7) and an imported
#    teacher checkpoint ($SHARED_DIR/teacher.pt, a copy of mlp-schedules' trained teacher); a second
#    sweep with another student.lr gives two settings; reports for test_acc and --metric agreement.
{ common optim-import; echo "teacher: {arch: cnn, channels: [16, 32], hidden: 64, epochs: 3, checkpoint: $SHARED_DIR/teacher.pt}"; cat <<'EOF'
student:
  arch: mlp
  hidden: [32, 32]
  epochs: 3
  optimizer: adamw
  lr: 0.01
  weight_decay: 0.01
  lr_schedule: multistep
  lr_milestones: [1, 2]
  lr_gamma: 0.5
  batch_size: 128
kd:
  alpha: 0.7
  temperatures: [2, 4]
  seeds: [0, 1]
train: {clip_grad_norm: 1.0}
EOF
} > configs/optim-import.yaml

# 9. Resume after Ctrl-C: the sweep gets SIGINT once the first epoch row is in a metrics.csv, then
#    the same command completes it (the final files must equal an uninterrupted sweep's).
{ common resume; echo "$TEACHER"; cat <<'EOF'
student: {arch: mlp, hidden: [32], epochs: 4}
kd:
  temperatures: [1, 4]
  seeds: [0, 1]
train: {max_group_size: 2}
EOF
} > configs/resume.yaml

# ---------------------------------------------------------------------------------------------
echo "running experiments in $OUT_DIR"
experiment mlp-schedules
experiment cnn-ctkd-logitstd
experiment resnet-images
experiment ensemble-weighted
experiment born-again
experiment user-code

# 4: hints, two sweeps (two settings) into one experiment.
t0=$SECONDS
kd hints-train-teacher train-teacher -c configs/hints.yaml
kd hints-sweep sweep -c configs/hints.yaml
kd hints-sweep-conv sweep -c configs/hints.yaml "${HINTS_CONV[@]}"
report hints -c configs/hints.yaml
status hints
echo "  hints: $((SECONDS - t0))s"

# 8: the imported teacher, two sweeps (two settings), reports for two metrics.
t0=$SECONDS
cp runs/mlp-schedules/teacher/model.pt "$SHARED_DIR/teacher.pt"
kd optim-import-train-teacher train-teacher -c configs/optim-import.yaml
kd optim-import-sweep sweep -c configs/optim-import.yaml
kd optim-import-sweep2 sweep -c configs/optim-import.yaml --set student.lr=0.02 --seeds 0
report optim-import -c configs/optim-import.yaml
report optim-import.agreement -c configs/optim-import.yaml --metric agreement
echo "  optim-import: $((SECONDS - t0))s"

# 9: Ctrl-C, then resume.
t0=$SECONDS
kd resume-train-teacher train-teacher -c configs/resume.yaml
"$PYTHON" - configs/resume.yaml runs/resume/students > logs/resume-interrupted.log 2>&1 <<'PYEOF' || {
import signal, subprocess, sys, time
from pathlib import Path

config, students = sys.argv[1], Path(sys.argv[2])

def rows():
    total = 0
    for csv in students.glob("*/metrics.csv"):
        total += max(0, len(csv.read_text().splitlines()) - 1)
    return total

process = subprocess.Popen([sys.executable, "-m", "kdtemp", "sweep", "-c", config],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
deadline = time.monotonic() + 300
while rows() < 1 and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
if process.poll() is not None:
    print(process.stdout.read())
    sys.exit(f"the sweep ended (rc {process.returncode}) before it could be interrupted")
process.send_signal(signal.SIGINT)
out, _ = process.communicate(timeout=120)
print(out)
print(f"rows when interrupted: {rows()}; exit code {process.returncode}")
if process.returncode != 130:
    sys.exit(f"expected exit code 130 after SIGINT, got {process.returncode}")
PYEOF
    echo "error: the interrupted sweep did not behave; see $OUT_DIR/logs/resume-interrupted.log" >&2
    tail -20 logs/resume-interrupted.log >&2
    exit 1
}
kd resume-sweep-resumed sweep -c configs/resume.yaml
grep -Eq " [1-9][0-9]* resumed" logs/resume-sweep-resumed.log || {
    echo "error: the rerun resumed no run; see $OUT_DIR/logs/resume-sweep-resumed.log" >&2
    exit 1
}
report resume -c configs/resume.yaml
status resume
echo "  resume: $((SECONDS - t0))s"

# 10: a side-by-side comparison report of two experiments (runs/comparison/).
report comparison -c configs/born-again.yaml --name born-again,ensemble-weighted

echo "done in $((SECONDS - SECONDS_START))s: $OUT_DIR"
