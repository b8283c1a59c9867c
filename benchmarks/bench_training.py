"""Data-parallel training throughput on 2 ranks: adcme_mpi (Keras model.fit
with adcme_mpi.keras.DistributedOptimizer, launched by mpiexec) against
TensorFlow's MultiWorkerMirroredStrategy (two local workers through
TF_CONFIG, Keras model.fit under the strategy's scope), and Horovod when it
imports. Same model, same global batch, same synthetic data, one intra-op
thread per process; the systems alternate round by round, each round a
fresh launch; medians with [min..max] over rounds.

Also the fusion threshold: a custom loop with DistributedGradientTape under
tf.function, several thresholds alternated inside one launch.

    python benchmarks/bench_training.py --rounds 3             # tables; JSON in benchmarks/results/
    python benchmarks/bench_training.py --rounds 1 --steps 10  # quick look

Run from the checkout with the package importable (PYTHONPATH=build, or installed).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
MPIEXEC = os.environ.get("MPIEXEC", os.path.join(os.path.dirname(PY), "mpiexec"))
GLOBAL_BATCH = 128
MODELS = ("mlp", "conv")
FUSION_MODELS = MODELS + ("deep",)
THRESHOLDS = (0, 64 * 1024, 1024 * 1024, 64 * 1024 * 1024)


def make_model(kind):
    import keras

    if kind == "mlp":  # 784-256-256-10: 0.27 M parameters in 6 tensors
        layers = [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    elif kind == "deep":  # 784-(32 x 20)-10: 46 k parameters in 44 small tensors (fusion only)
        layers = [keras.Input((784,))]
        layers += [keras.layers.Dense(32, activation="relu") for _ in range(20)]
        layers += [keras.layers.Dense(10)]
    else:  # 2 convolutions, pooling, dense: 0.06 M parameters in 6 tensors
        layers = [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    return keras.Sequential(layers)


def data(kind, rows, seed):
    import numpy as np

    g = np.random.default_rng(seed)
    shape = (rows, 28, 28, 1) if kind == "conv" else (rows, 784)
    return g.standard_normal(shape).astype("float32"), g.integers(0, 10, rows).astype("int64")


def loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Timer:
    """Seconds per step over the timed steps (after the warm-up epoch)."""

    def __init__(self):
        import keras

        class CB(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.epochs.append(time.perf_counter() - cb.start)

        self.epochs = []
        self.callback = CB()


def one_thread():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def worker_ours(args):
    one_thread()
    import keras

    import adcme_mpi as am
    import adcme_mpi.keras as amk

    rank, size = am.mpi_rank(), am.mpi_size()
    per_rank = GLOBAL_BATCH // size
    x, y = data(args.model, per_rank * args.steps, seed=rank)
    model = make_model(args.model)
    model.compile(optimizer=amk.DistributedOptimizer(keras.optimizers.SGD(0.01)), loss=loss())
    timer = Timer()
    model.fit(
        x, y, batch_size=per_rank, epochs=2, shuffle=False, verbose=0,
        callbacks=[amk.BroadcastGlobalVariablesCallback(0), timer.callback],
    )  # fmt: skip
    report(args, rank, GLOBAL_BATCH * args.steps / timer.epochs[-1])


def timed_steps(step, steps):
    """Samples per second over `steps` calls of step() after 3 warm-up calls."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        value = step()
    float(value)  # (the last step's result, so every step has run)
    return GLOBAL_BATCH * steps / (time.perf_counter() - start)


def sgd_step(model, x, y, reduce_grads):
    """One SGD step (lr 0.01) on (x, y), the gradients through reduce_grads."""
    import tensorflow as tf

    lossf = loss()

    def step():
        with tf.GradientTape() as tape:
            value = lossf(y, model(x, training=True))
        grads = reduce_grads(tape, value, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(0.01 * g)
        return value

    return step


def worker_ours_loop(args):
    one_thread()
    import tensorflow as tf

    import adcme_mpi as am

    rank, size = am.mpi_rank(), am.mpi_size()
    x, y = data(args.model, GLOBAL_BATCH // size, seed=rank)
    model = make_model(args.model)
    am.broadcast_variables(model.variables)

    def reduce_grads(tape, value, variables):
        return am.DistributedGradientTape(tape).gradient(value, variables)

    step = tf.function(sgd_step(model, x, y, reduce_grads))
    report(args, rank, timed_steps(step, args.steps))


def worker_horovod(args):
    one_thread()
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    x, y = data(args.model, GLOBAL_BATCH // hvd.size(), seed=hvd.rank())
    model = make_model(args.model)
    hvd.broadcast_variables(model.variables, root_rank=0)

    def reduce_grads(tape, value, variables):
        return hvd.DistributedGradientTape(tape).gradient(value, variables)

    step = tf.function(sgd_step(model, x, y, reduce_grads))
    report(args, hvd.rank(), timed_steps(step, args.steps))


def worker_mwms(args):
    one_thread()
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    x, y = data(args.model, GLOBAL_BATCH // 2, seed=index)  # this worker's half
    with strategy.scope():
        model = make_model(args.model)  # (the strategy broadcasts the initial values)

    def reduce_grads(tape, value, variables):
        grads = tape.gradient(value, variables)
        return tf.distribute.get_replica_context().all_reduce("MEAN", grads)

    step = sgd_step(model, tf.constant(x), tf.constant(y), reduce_grads)

    @tf.function
    def distributed_step():
        return strategy.reduce("MEAN", strategy.run(step), axis=None)

    report(args, index, timed_steps(distributed_step, args.steps))


def worker_fusion(args):
    """Seconds per custom-loop step for each threshold, alternated."""
    one_thread()
    import tensorflow as tf

    import adcme_mpi as am

    rank, size = am.mpi_rank(), am.mpi_size()
    per_rank = GLOBAL_BATCH // size
    x, y = data(args.model, per_rank, seed=rank)
    model = make_model(args.model)
    am.broadcast_variables(model.variables)
    lossf = loss()
    steps = {}
    for threshold in THRESHOLDS:

        @tf.function
        def step(threshold=threshold):
            with tf.GradientTape() as tape:
                value = lossf(y, model(x, training=True))
            tape = am.DistributedGradientTape(tape, fusion_threshold=threshold)
            grads = tape.gradient(value, model.trainable_variables)
            for v, g in zip(model.trainable_variables, grads):
                v.assign_sub(0.01 * g)
            return value

        step()  # trace
        steps[threshold] = step
    times = {t: [] for t in THRESHOLDS}
    for _ in range(args.fusion_rounds):
        for threshold, step in steps.items():
            am.mpi_barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[threshold].append((time.perf_counter() - start) / args.steps)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({str(t): v for t, v in times.items()}, f)


def report(args, rank, samples_per_s):
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"samples_per_s": samples_per_s}, f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(system, model, steps, out, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    if system.endswith("_yield"):  # waits yield the core instead of spinning
        system, env["ADCME_MPI_OVERSUBSCRIBED"] = system.removesuffix("_yield"), "1"
    me = [os.path.abspath(__file__), "--worker", system, "--model", model, "--steps", str(steps)]
    me += ["--out", out]
    if system == "mwms":
        ports = [free_port(), free_port()]
        procs = []
        for i in range(2):
            config = {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": i},
            }
            procs.append(
                subprocess.Popen(
                    [PY] + me,
                    env=dict(env, TF_CONFIG=json.dumps(config)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )  # fmt: skip
            )
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
        codes = [p.returncode for p in procs]
    else:
        python = PY if system != "horovod" else os.environ.get("HOROVOD_PYTHON", PY)
        mpiexec = MPIEXEC if system != "horovod" else os.environ.get("HOROVOD_MPIEXEC", MPIEXEC)
        proc = subprocess.run(
            [mpiexec, "-n", "2", python] + me, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        outs, codes = [proc.stdout + proc.stderr], [proc.returncode]
    if any(codes) or not os.path.exists(out):
        raise RuntimeError(
            f"{system} {model} failed: {codes}\n" + "\n".join(o[-3000:] for o in outs)
        )
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    return result


def spread(values):
    return f"{statistics.median(values):.0f} [{min(values):.0f}..{max(values):.0f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "ours_loop", "mwms", "horovod", "fusion"])
    p.add_argument("--model", choices=FUSION_MODELS, default="mlp")
    p.add_argument("--fusion-only", action="store_true")
    p.add_argument("--steps", type=int, default=30, help="timed steps per epoch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fusion-rounds", type=int, default=5)
    p.add_argument("--horovod", action="store_true", help="also Horovod (HOROVOD_PYTHON)")
    p.add_argument("--out")
    p.add_argument("--json", default=os.path.join(HERE, "results", "training.json"))
    args = p.parse_args()
    if args.worker:
        return globals()[f"worker_{args.worker}"](args)

    systems = ["ours_loop", "ours_loop_yield", "mwms", "ours", "ours_yield"]
    systems += ["horovod"] if args.horovod else []
    results = {m: {s: [] for s in systems} for m in MODELS}
    tmp = tempfile.mkdtemp()
    for r in range(0 if args.fusion_only else args.rounds):
        for model in MODELS:
            order = systems if r % 2 == 0 else systems[::-1]
            for system in order:
                out = os.path.join(tmp, f"{system}_{model}.json")
                value = launch(system, model, args.steps, out)["samples_per_s"]
                results[model][system].append(value)
                print(f"round {r} {model} {system}: {value:.0f} samples/s", flush=True)
    fusion = {}
    for model in FUSION_MODELS:
        out = os.path.join(tmp, f"fusion_{model}.json")
        me = [os.path.abspath(__file__), "--worker", "fusion", "--model", model]
        me += ["--steps", str(args.steps), "--fusion-rounds", str(args.fusion_rounds), "--out", out]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", ADCME_MPI_OVERSUBSCRIBED="1")
        subprocess.run([MPIEXEC, "-n", "2", PY] + me, check=True, timeout=900, env=env)
        with open(out) as f:
            fusion[model] = json.load(f)
    if args.fusion_only:
        results = {}
    print(f"\nglobal batch {GLOBAL_BATCH}, 2 ranks, samples/s, median [min..max] of {args.rounds}")
    print("(_yield: ADCME_MPI_OVERSUBSCRIBED=1, waits yield the core instead of spinning)")
    print("| model | " + " | ".join(systems) + " | ours_loop / mwms |")
    print("|---|" + "---|" * (len(systems) + 1))
    for model in results:
        cells = [spread(results[model][s]) for s in systems]
        ratios = [a / b for a, b in zip(results[model]["ours_loop"], results[model]["mwms"])]
        ratio = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]"
        print(f"| {model} | " + " | ".join(cells) + f" | {ratio} |")
    print(
        "\nfusion threshold: ms per custom-loop step (DistributedGradientTape; waits yield),"
        " median [min..max]"
    )
    print("| model | " + " | ".join(f"{t} B" for t in THRESHOLDS) + " |")
    print("|---|" + "---|" * len(THRESHOLDS))
    for model in FUSION_MODELS:
        cells = []
        for t in THRESHOLDS:
            v = [s * 1e3 for s in fusion[model][str(t)]]
            cells.append(f"{statistics.median(v):.2f} [{min(v):.2f}..{max(v):.2f}]")
        print(f"| {model} | " + " | ".join(cells) + " |")
    if args.fusion_only:
        args.json = args.json.replace(".json", "_fusion.json")
    with open(args.json, "w") as f:
        json.dump({"throughput": results, "fusion_seconds_per_step": fusion}, f, indent=1)


if __name__ == "__main__":
    main()
