"""Study files that must be refused, with the key and a phrase of the one-line error.

``BAD_STUDIES`` rows are ``(id, toml_text, expected_key, expected_phrase)``; the key is
the dotted key the SpecError names (None: the file as a whole). ``BY_PART`` holds them by the
part of the file they get wrong. The spec tests run every row through the parser, the CLI
tests ``CLI_SAMPLE`` through the launcher; ``special_file`` makes the study "files" that are
not regular files (a FIFO, a socket, /dev/zero, a directory). ``BAD_FLAGS``: flags and
arguments the launcher refuses, whatever the study file.
"""

import os
import socket
from pathlib import Path

HEAD = 'name = "bad-study"'
BUDGET = "[budget]\nn_trials = 4"
_TRAIN = {"epochs": "1", "batch_size": "10", "eta": "0.1"}


def train(drop: tuple[str, ...] = (), **values: str) -> str:
    """A [train] table: epochs 1, batch_size 10, eta 0.1, less ``drop``, with ``values`` (TOML text) set."""
    settings = {**{k: v for k, v in _TRAIN.items() if k not in drop}, **values}
    return "[train]\n" + "\n".join(f"{k} = {v}" for k, v in settings.items())


def study(*sections: str, head: str = HEAD, budget: str = BUDGET, train_table: str | None = None) -> str:
    """A study file: ``head`` (top-level keys), ``sections``, the budget and [train] (default: ``train()``)."""
    parts = [head, *sections, budget, train() if train_table is None else train_table]
    return "\n\n".join(part for part in parts if part) + "\n"


def space(**entries: str) -> str:
    """A [space] table from TOML value texts."""
    return "[space]\n" + "\n".join(f"{k} = {v}" for k, v in entries.items())


NO_ETA = train(drop=("eta",))
NO_BATCH = train(drop=("batch_size",))
GRID = '[sampler]\nname = "grid"'
TWO_OBJECTIVES = '[[objective]]\nmetric = "validation_accuracy"\n\n[[objective]]\nmetric = "training_seconds"'
HIDDEN_10_30 = space(hidden='{ type = "int", low = 10, high = 30 }')
HOMEWORK = space(
    batch_size='{ type = "int", low = 5, high = 55, step = 5 }',
    eta='{ type = "float", low = 0.05, high = 0.55, step = 0.05 }',
)
NO_BATCH_NO_ETA = train(drop=("batch_size", "eta"))
COST_OBJECTIVE = '[[objective]]\nmetric = "training_cost"\ndirection = "minimize"'

DEEP = 100_000  # levels of nesting: far beyond Python's recursion limit
DEEP_ARRAYS = f"{HEAD}\na = {'[' * DEEP}{']' * DEEP}\n"
DEEP_TABLES = f"{HEAD}\na = {'{ b = ' * DEEP}1{' }' * DEEP}\n"
OVERSIZED = study() + "#" * (1 << 20) + "\n"  # a valid study, padded with a comment beyond 1 MiB
#: Study files refused before they are parsed: {id: (text, phrase)}.
UNREADABLE = {
    "deep-arrays": (DEEP_ARRAYS, "nested more than 32 levels"),
    "deep-inline-tables": (DEEP_TABLES, "nested more than 32 levels"),
    "oversized": (OVERSIZED, "larger than 1 MiB"),
}


def special_file(workdir: Path, kind: str) -> Path:
    """A FIFO, a listening socket's file, /dev/zero, a directory, or an UNREADABLE study file."""
    path = workdir / f"{kind}.toml"
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes to it: opening it to read would wait for ever
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "dev-zero":
        return Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text(UNREADABLE[kind][0])
    return path


#: Study files refused by the parser, by the part of the file they get wrong: {category: rows}.
BY_PART: dict[str, list[tuple[str, str, str | None, str]]] = {
    "the file itself": [
        ("toml-syntax", 'name = "x"\n[train\nepochs = 1\n', None, "line 2"),
        ("toml-missing-value", "name =\n", None, "invalid TOML"),
        ("toml-duplicate-key", 'name = "a"\nname = "b"\n', None, "invalid TOML"),
        *((case_id, text, None, phrase) for case_id, (text, phrase) in UNREADABLE.items()),
    ],
    "top level": [
        ("name-missing", study(head=""), "name", "required"),
        ("name-invalid", study(head='name = "my study"'), "name", "letters, digits"),
        ("name-not-string", study(head="name = 3"), "name", "must be a string"),
        ("parent-invalid", study(head=HEAD + '\nparent = "a/b"'), "parent", "letters, digits"),
        ("description-not-string", study(head=HEAD + "\ndescription = 3"), "description", "must be a string"),
        ("unknown-top-key", study(head=HEAD + '\ncolour = "red"'), "colour", "unknown key"),
        ("unknown-top-table", study("[trian]\nepochs = 3"), "trian", "did you mean 'train'"),
    ],
    "[data]": [
        ("dataset-unknown", study('[data]\ndataset = "cifar10"'), "data.dataset", "unknown dataset"),
        ("dataset-not-string", study("[data]\ndataset = 5"), "data.dataset", "must be a string"),
        ("n-train-zero", study("[data]\nn_train = 0"), "data.n_train", "at least 1"),
        ("n-validation-negative", study("[data]\nn_validation = -5"), "data.n_validation", "at least 1"),
        ("n-test-string", study('[data]\nn_test = "all"'), "data.n_test", "must be an integer"),
        ("n-train-float", study("[data]\nn_train = 100.0"), "data.n_train", "must be an integer"),
        ("data-unknown-key", study("[data]\nn_trains = 5"), "data.n_trains", "unknown key"),
        ("data-not-table", study(head=HEAD + '\ndata = "mnist"'), "data", "must be a table"),
    ],
    "[[objective]]": [
        ("metric-unknown", study('[[objective]]\nmetric = "val_acc"'), "objective[0].metric", "unknown metric"),
        ("metric-missing", study('[[objective]]\ndirection = "maximize"'), "objective[0].metric", "required"),
        (
            "direction-bad",
            study('[[objective]]\nmetric = "gap"\ndirection = "max"'),
            "objective[0].direction",
            "unknown direction",
        ),
        (
            "metric-duplicate",
            study('[[objective]]\nmetric = "gap"\n\n[[objective]]\nmetric = "gap"'),
            "objective[1].metric",
            "duplicate metric",
        ),
        ("objective-unknown-key", study('[[objective]]\nmetric = "gap"\ngoal = 1'), "objective[0].goal", "unknown key"),
        ("objective-empty", study(head=HEAD + "\nobjective = []"), "objective", "at least one objective"),
        ("objective-not-array", study('[objective]\nmetric = "gap"'), "objective", "must be an array"),
        (
            "metric-not-monitored",
            study(train_table=train(monitor_validation_accuracy="false")),
            "objective[0].metric",
            "monitor_validation_accuracy = true",
        ),
        (
            "gap-not-monitored",
            study('[[objective]]\nmetric = "gap"', train_table=train(monitor_training_accuracy="false")),
            "objective[0].metric",
            "monitor_training_accuracy = true",
        ),
        (
            "best-not-monitored",
            study(
                '[[objective]]\nmetric = "best_validation_accuracy"',
                train_table=train(monitor_validation_accuracy="false"),
            ),
            "objective[0].metric",
            "monitor_validation_accuracy = true",
        ),
    ],
    "[sampler]": [
        ("sampler-unknown", study('[sampler]\nname = "annealing"'), "sampler.name", "unknown sampler"),
        ("sampler-name-not-string", study("[sampler]\nname = 1"), "sampler.name", "must be a string"),
        (
            "sampler-option-unknown",
            study('[sampler]\nname = "tpe"\nn_startup = 3'),
            "sampler.n_startup",
            "unknown option of the tpe sampler",
        ),
        (
            "sampler-option-not-settable",
            study('[sampler]\nname = "tpe"\nconstraints_func = "f"'),
            "sampler.constraints_func",
            "unknown option",
        ),
        (
            "sampler-option-type",
            study('[sampler]\nname = "tpe"\nn_startup_trials = "ten"'),
            "sampler.n_startup_trials",
            "must be int",
        ),
        (
            "sampler-option-bool-for-int",
            study('[sampler]\nname = "tpe"\nn_startup_trials = true'),
            "sampler.n_startup_trials",
            "must be int",
        ),
        (
            "sampler-option-rejected",
            study('[sampler]\nname = "nsga2"\npopulation_size = 1'),
            "sampler.population_size",
            "rejected by optuna",
        ),
        (
            "sampler-option-rejected-qmc",
            study('[sampler]\nname = "qmc"\nqmc_type = "lattice"'),
            "sampler.qmc_type",
            "rejected by optuna",
        ),
        ("sampler-seed-negative", study("[sampler]\nseed = -1"), "sampler.seed", "at least 0"),
        ("sampler-seed-float", study("[sampler]\nseed = 1.5"), "sampler.seed", "must be an integer"),
        ("sampler-seed-bool", study("[sampler]\nseed = true"), "sampler.seed", "must be an integer"),
        (
            "cmaes-multi-objective",
            study(TWO_OBJECTIVES, '[sampler]\nname = "cmaes"'),
            "sampler.name",
            "single objective",
        ),
        (
            "grid-continuous-float",
            study(GRID, space(eta='{ type = "float", low = 0.05, high = 0.5 }'), train_table=NO_ETA),
            "space.eta",
            "the grid sampler needs a step or choices",
        ),
        (
            "bruteforce-continuous-float",
            study(
                '[sampler]\nname = "bruteforce"', space(lmbda='{ type = "float", low = 0.001, high = 1.0, log = true }')
            ),
            "space.lmbda",
            "the bruteforce sampler needs a step or choices",
        ),
    ],
    "[pruner]": [
        ("pruner-unknown", study('[pruner]\nname = "early"'), "pruner.name", "unknown pruner"),
        (
            "pruner-option-unknown",
            study('[pruner]\nname = "median"\nn_warmup = 2'),
            "pruner.n_warmup",
            "unknown option",
        ),
        (
            "pruner-option-type",
            study('[pruner]\nname = "median"\nn_warmup_steps = 2.5'),
            "pruner.n_warmup_steps",
            "must be int",
        ),
        (
            "pruner-option-rejected",
            study('[pruner]\nname = "median"\nn_startup_trials = -1'),
            "pruner.n_startup_trials",
            "rejected by optuna",
        ),
        ("pruner-option-required", study('[pruner]\nname = "percentile"'), "pruner.percentile", "required"),
        ("pruner-no-bound", study('[pruner]\nname = "threshold"'), "pruner", "Either lower or upper"),
        (
            "pruner-wrapped-not-patient",
            study('[pruner]\nname = "median"\n\n[pruner.wrapped]\nname = "median"'),
            "pruner.wrapped",
            "only the patient pruner",
        ),
        (
            "pruner-wrapped-unknown",
            study('[pruner]\nname = "patient"\npatience = 2\n\n[pruner.wrapped]\nname = "mean"'),
            "pruner.wrapped.name",
            "unknown pruner",
        ),
        (
            "pruner-wrapped-rejected",
            study('[pruner]\nname = "patient"\npatience = 2\n\n[pruner.wrapped]\nname = "median"\nn_warmup_steps = -2'),
            "pruner.wrapped.n_warmup_steps",
            "rejected by optuna",
        ),
        (
            "pruner-multi-objective",
            study(TWO_OBJECTIVES, '[pruner]\nname = "median"'),
            "pruner",
            "pruning needs a single objective",
        ),
        (
            "pruner-not-per-epoch",
            study('[[objective]]\nmetric = "test_accuracy"', '[pruner]\nname = "hyperband"'),
            "pruner",
            "per-epoch metric",
        ),
    ],
    "[budget]": [
        ("budget-missing", study(budget=""), "budget", "n_trials or timeout"),
        ("n-trials-zero", study(budget="[budget]\nn_trials = 0"), "budget.n_trials", "at least 1"),
        ("n-trials-float", study(budget="[budget]\nn_trials = 10.0"), "budget.n_trials", "must be an integer"),
        ("timeout-zero", study(budget="[budget]\ntimeout = 0"), "budget.timeout", "must be positive"),
        ("timeout-negative", study(budget="[budget]\ntimeout = -60.0"), "budget.timeout", "must be positive"),
        ("timeout-string", study(budget='[budget]\ntimeout = "1h"'), "budget.timeout", "finite number"),
        (
            "at-timeout-unknown",
            study(budget='[budget]\ntimeout = 5\nat_timeout = "kill"'),
            "budget.at_timeout",
            "unknown at_timeout",
        ),
        ("budget-unknown-key", study(budget="[budget]\ntrials = 3"), "budget.trials", "unknown key"),
    ],
    "[train]": [
        ("batch-size-string", study(train_table=train(batch_size='"ten"')), "train.batch_size", "must be an integer"),
        ("batch-size-bool", study(train_table=train(batch_size="true")), "train.batch_size", "must be an integer"),
        ("batch-size-float", study(train_table=train(batch_size="10.0")), "train.batch_size", "must be an integer"),
        ("batch-size-zero", study(train_table=train(batch_size="0")), "train.batch_size", "at least 1"),
        ("batch-size-negative", study(train_table=train(batch_size="-10")), "train.batch_size", "at least 1"),
        ("eta-zero", study(train_table=train(eta="0.0")), "train.eta", "must be positive"),
        ("eta-negative", study(train_table=train(eta="-0.1")), "train.eta", "must be positive"),
        ("eta-string", study(train_table=train(eta='"fast"')), "train.eta", "finite number"),
        ("eta-nan", study(train_table=train(eta="nan")), "train.eta", "finite number"),
        ("eta-bool", study(train_table=train(eta="true")), "train.eta", "finite number"),
        ("lmbda-negative", study(train_table=train(lmbda="-0.5")), "train.lmbda", "zero or positive"),
        ("epochs-zero", study(train_table=train(epochs="0")), "train.epochs", "at least 1"),
        ("momentum-one", study(train_table=train(momentum="1.0")), "train.momentum", "below 1"),
        ("momentum-negative", study(train_table=train(momentum="-0.5")), "train.momentum", "at least 0"),
        ("momentum-string", study(train_table=train(momentum='"high"')), "train.momentum", "finite number"),
        ("dropout-one", study(train_table=train(dropout="1")), "train.dropout", "below 1"),
        ("dropout-bool", study(train_table=train(dropout="true")), "train.dropout", "finite number"),
        ("patience-negative", study(train_table=train(patience="-1")), "train.patience", "at least 0"),
        ("patience-float", study(train_table=train(patience="2.5")), "train.patience", "must be an integer"),
        ("eta-patience-huge", study(train_table=train(eta_patience="100000")), "train.eta_patience", "at most"),
        ("eta-min-factor-one", study(train_table=train(eta_min_factor="1.0")), "train.eta_min_factor", "above 1"),
        ("max-norm-zero", study(train_table=train(max_norm="0")), "train.max_norm", "must be positive, got 0"),
        ("max-norm-negative", study(train_table=train(max_norm="-3.0")), "train.max_norm", "must be positive"),
        ("max-norm-inf", study(train_table=train(max_norm="inf")), "train.max_norm", "finite number, got inf"),
        ("max-norm-string", study(train_table=train(max_norm='"3"')), "train.max_norm", "finite number"),
        (
            "max-norm-range-from-zero",
            study(space(max_norm='{ type = "float", low = 0.0, high = 4.0 }')),
            "space.max_norm.low",
            "must be positive",
        ),
        (
            "patience-unmonitored",
            study(COST_OBJECTIVE, train_table=train(patience="3", monitor_validation_accuracy="false")),
            "train.patience",
            "needs train.monitor_validation_accuracy = true",
        ),
        ("seed-negative", study(train_table=train(seed="-1")), "train.seed", "at least 0"),
        (
            "monitor-not-bool",
            study(train_table=train(monitor_training_cost="1")),
            "train.monitor_training_cost",
            "true or false",
        ),
        ("activation-unknown", study(train_table=train(activation='"tanh"')), "train.activation", "unknown activation"),
        ("cost-unknown", study(train_table=train(cost='"hinge"')), "train.cost", "unknown cost"),
        ("sizes-first-not-784", study(train_table=train(sizes="[100, 30, 10]")), "train.sizes", "from 784 inputs"),
        ("sizes-last-not-10", study(train_table=train(sizes="[784, 30, 2]")), "train.sizes", "10 outputs"),
        ("sizes-too-short", study(train_table=train(sizes="[784]")), "train.sizes", "from 784 inputs"),
        ("sizes-zero-layer", study(train_table=train(sizes="[784, 0, 10]")), "train.sizes[1]", "at least 1"),
        ("sizes-not-array", study(train_table=train(sizes="30")), "train.sizes", "must be an array"),
        ("train-unknown-key", study(train_table=train(hidden="30")), "train.hidden", "unknown key"),
        ("train-typo", study(train_table=train(epoch="3")), "train.epoch", "did you mean 'epochs'"),
        ("train-not-table", study(head=HEAD + "\ntrain = 3", train_table=""), "train", "must be a table"),
        ("batch-size-missing", study(train_table=NO_BATCH), "batch_size", "must be given in [train] or [space]"),
        ("eta-missing", study(train_table=NO_ETA), "eta", "must be given in [train] or [space]"),
        (
            "train-and-space",
            study(space(eta='{ type = "float", low = 0.1, high = 0.5 }')),
            "space.eta",
            "also given in [train]",
        ),
    ],
    "[space]": [
        ("space-not-table", study(head=HEAD + "\nspace = 3"), "space", "must be a table"),
        (
            "space-unknown-param",
            study(space(nesterov='{ type = "float", low = 0.1, high = 0.9 }')),
            "space.nesterov",
            "not a tunable parameter",
        ),
        (
            "space-unknown-key",
            study(space(hidden='{ type = "int", low = 10, high = 30, stp = 5 }')),
            "space.hidden.stp",
            "did you mean 'step'",
        ),
        ("space-type-missing", study(space(hidden="{ low = 10, high = 30 }")), "space.hidden.type", "required"),
        (
            "space-type-unknown",
            study(space(hidden='{ type = "uniform", low = 10, high = 30 }')),
            "space.hidden.type",
            "unknown type",
        ),
        (
            "space-float-for-int",
            study(space(hidden='{ type = "float", low = 10, high = 30 }')),
            "space.hidden.type",
            'hidden takes type = "int"',
        ),
        (
            "space-int-for-float",
            study(space(eta='{ type = "int", low = 1, high = 3 }'), train_table=NO_ETA),
            "space.eta.type",
            'eta takes type = "float"',
        ),
        (
            "space-range-for-choice",
            study(space(activation='{ type = "int", low = 1, high = 3 }')),
            "space.activation.type",
            'takes type = "categorical"',
        ),
        ("range-low-missing", study(space(hidden='{ type = "int", high = 30 }')), "space.hidden.low", "required"),
        ("range-empty", study(space(hidden='{ type = "int", low = 30, high = 30 }')), "space.hidden", "empty range"),
        (
            "range-inverted",
            study(space(hidden='{ type = "int", low = 30, high = 10 }')),
            "space.hidden",
            "inverted range",
        ),
        (
            "float-range-empty",
            study(space(eta='{ type = "float", low = 0.1, high = 0.1 }'), train_table=NO_ETA),
            "space.eta",
            "empty range",
        ),
        (
            "float-range-inverted",
            study(space(eta='{ type = "float", low = 0.5, high = 0.1 }'), train_table=NO_ETA),
            "space.eta",
            "inverted range",
        ),
        (
            "int-step-zero",
            study(space(hidden='{ type = "int", low = 10, high = 30, step = 0 }')),
            "space.hidden.step",
            "must be positive",
        ),
        (
            "float-step-negative",
            study(space(eta='{ type = "float", low = 0.1, high = 0.5, step = -0.1 }'), train_table=NO_ETA),
            "space.eta.step",
            "must be positive",
        ),
        (
            "float-step-with-log",
            study(space(eta='{ type = "float", low = 0.1, high = 0.5, step = 0.1, log = true }'), train_table=NO_ETA),
            "space.eta.step",
            "cannot be combined with log",
        ),
        (
            "int-step-with-log",
            study(space(batch_size='{ type = "int", low = 5, high = 55, step = 5, log = true }'), train_table=NO_BATCH),
            "space.batch_size.step",
            "cannot be combined with log",
        ),
        (
            "log-low-zero",
            study(space(lmbda='{ type = "float", low = 0.0, high = 1.0, log = true }')),
            "space.lmbda.low",
            "must be positive with log",
        ),
        (
            "log-not-bool",
            study(space(lmbda='{ type = "float", low = 0.1, high = 1.0, log = "yes" }')),
            "space.lmbda.log",
            "true or false",
        ),
        (
            "float-step-not-dividing",
            study(space(eta='{ type = "float", low = 0.05, high = 0.55, step = 0.15 }'), train_table=NO_ETA),
            "space.eta.step",
            "does not divide",
        ),
        (
            "int-step-not-dividing",
            study(space(batch_size='{ type = "int", low = 5, high = 55, step = 7 }'), train_table=NO_BATCH),
            "space.batch_size.step",
            "does not divide",
        ),
        (
            "int-range-float-bound",
            study(space(hidden='{ type = "int", low = 10.5, high = 30 }')),
            "space.hidden.low",
            "must be an integer",
        ),
        (
            "int-range-bool-bound",
            study(space(hidden='{ type = "int", low = true, high = 30 }')),
            "space.hidden.low",
            "must be an integer",
        ),
        (
            "float-range-string-bound",
            study(space(eta='{ type = "float", low = "small", high = 0.5 }'), train_table=NO_ETA),
            "space.eta.low",
            "finite number",
        ),
        (
            "float-range-infinite-bound",
            study(space(lmbda='{ type = "float", low = 0.0, high = inf }')),
            "space.lmbda.high",
            "finite number",
        ),
        (
            "eta-range-zero-low",
            study(space(eta='{ type = "float", low = 0.0, high = 1.0 }'), train_table=NO_ETA),
            "space.eta.low",
            "must be positive",
        ),
        (
            "batch-size-range-zero-low",
            study(space(batch_size='{ type = "int", low = 0, high = 10 }'), train_table=NO_BATCH),
            "space.batch_size.low",
            "at least 1",
        ),
        (
            "lmbda-range-negative-low",
            study(space(lmbda='{ type = "float", low = -1.0, high = 1.0 }')),
            "space.lmbda.low",
            "zero or positive",
        ),
        (
            "momentum-range-to-one",
            study(space(momentum='{ type = "float", low = 0.5, high = 1.0 }')),
            "space.momentum.high",
            "below 1",
        ),
        (
            "dropout-range-int",
            study(space(dropout='{ type = "int", low = 0, high = 1 }')),
            "space.dropout.type",
            'dropout takes type = "float"',
        ),
        (
            "eta-patience-choice-negative",
            study(space(eta_patience='{ type = "categorical", choices = [2, -1] }')),
            "space.eta_patience.choices[1]",
            "at least 0",
        ),
        (
            "eta-patience-searched-unmonitored",
            study(
                COST_OBJECTIVE,
                space(eta_patience='{ type = "int", low = 1, high = 5 }'),
                train_table=train(monitor_validation_accuracy="false"),
            ),
            "space.eta_patience",
            "needs train.monitor_validation_accuracy = true",
        ),
        (
            "hidden-range-zero-low",
            study(space(hidden='{ type = "int", low = 0, high = 30 }')),
            "space.hidden.low",
            "at least 1",
        ),
        (
            "depth-range-zero-low",
            study(space(depth='{ type = "int", low = 0, high = 3 }')),
            "space.depth.low",
            "at least 1",
        ),
        (
            "epochs-fixed-zero",
            study(space(epochs="0"), train_table=train(drop=("epochs",))),
            "space.epochs",
            "at least 1",
        ),
        (
            "categorical-empty",
            study(space(activation='{ type = "categorical", choices = [] }')),
            "space.activation.choices",
            "at least one choice",
        ),
        (
            "categorical-invalid",
            study(space(activation='{ type = "categorical", choices = ["relu", "tanh"] }')),
            "space.activation.choices[1]",
            "unknown activation",
        ),
        (
            "categorical-duplicate",
            study(space(cost='{ type = "categorical", choices = ["quadratic", "quadratic"] }')),
            "space.cost.choices",
            "duplicate choices",
        ),
        (
            "categorical-not-array",
            study(space(activation='{ type = "categorical", choices = "relu" }')),
            "space.activation.choices",
            "must be an array",
        ),
        (
            "categorical-choices-missing",
            study(space(activation='{ type = "categorical" }')),
            "space.activation.choices",
            "required",
        ),
        (
            "categorical-wrong-type",
            study(space(batch_size='{ type = "categorical", choices = [10, "20"] }'), train_table=NO_BATCH),
            "space.batch_size.choices[1]",
            "must be an integer",
        ),
        (
            "categorical-negative-lmbda",
            study(space(lmbda='{ type = "categorical", choices = [0.0, -1.0] }')),
            "space.lmbda.choices[1]",
            "zero or positive",
        ),
        (
            "fixed-wrong-type",
            study(space(batch_size='"ten"'), train_table=NO_BATCH),
            "space.batch_size",
            "must be an integer",
        ),
        (
            "fixed-not-scalar",
            study(space(batch_size="[10, 20]"), train_table=NO_BATCH),
            "space.batch_size",
            "string, number or boolean",
        ),
        ("fixed-invalid-activation", study(space(activation='"tanh"')), "space.activation", "unknown activation"),
        (
            "depth-without-hidden-layer",
            study(space(depth='{ type = "int", low = 1, high = 3 }'), train_table=train(sizes="[784, 10]")),
            "space.depth",
            "no hidden layer",
        ),
        (
            "hidden-without-hidden-layer",
            study(HIDDEN_10_30, train_table=train(sizes="[784, 10]")),
            "space.hidden",
            "no hidden layer",
        ),
        (
            "hidden2-one-hidden-layer",
            study(space(hidden2='{ type = "int", low = 10, high = 30 }')),
            "space.hidden2",
            "train.sizes has one hidden layer at most",
        ),
        (
            "hidden2-depth-at-most-1",
            study(
                space(hidden2='{ type = "int", low = 10, high = 30 }', depth='{ type = "categorical", choices = [1] }')
            ),
            "space.hidden2",
            "space.depth is at most 1",
        ),
        (
            "hidden2-depth-without-hidden",
            study(
                space(hidden2="20", depth='{ type = "int", low = 1, high = 2 }'), train_table=train(sizes="[784, 10]")
            ),
            "space.depth",
            "no hidden layer",
        ),
        (
            "hidden2-range-zero-low",
            study(space(hidden2='{ type = "int", low = 0, high = 30 }'), train_table=train(sizes="[784, 30, 20, 10]")),
            "space.hidden2.low",
            "at least 1",
        ),
        (
            "hidden2-float",
            study(
                space(hidden2='{ type = "float", low = 10, high = 30 }'), train_table=train(sizes="[784, 30, 20, 10]")
            ),
            "space.hidden2.type",
            'hidden2 takes type = "int"',
        ),
        ("hidden2-in-train", study(train_table=train(hidden2="20")), "train.hidden2", "unknown key"),
    ],
    "[[enqueue]]": [
        (
            "enqueue-unknown-param",
            study(HIDDEN_10_30, "[[enqueue]]\nmomentum = 0.9"),
            "enqueue[0].momentum",
            "not a searched parameter",
        ),
        (
            "enqueue-fixed-param",
            study(
                space(hidden='{ type = "int", low = 10, high = 30 }', epochs="5"),
                "[[enqueue]]\nepochs = 5",
                train_table=train(drop=("epochs",)),
            ),
            "enqueue[0].epochs",
            "not a searched parameter",
        ),
        (
            "enqueue-outside-range",
            study(HIDDEN_10_30, "[[enqueue]]\nhidden = 40"),
            "enqueue[0].hidden",
            "outside the space",
        ),
        (
            "enqueue-off-step",
            study(HOMEWORK, "[[enqueue]]\nbatch_size = 12", train_table=NO_BATCH_NO_ETA),
            "enqueue[0].batch_size",
            "outside the space",
        ),
        (
            "enqueue-off-float-step",
            study(HOMEWORK, "[[enqueue]]\nbatch_size = 10\neta = 0.12", train_table=NO_BATCH_NO_ETA),
            "enqueue[0].eta",
            "outside the space",
        ),
        (
            "enqueue-not-a-choice",
            study(
                space(activation='{ type = "categorical", choices = ["relu"] }'), '[[enqueue]]\nactivation = "sigmoid"'
            ),
            "enqueue[0].activation",
            "outside the space",
        ),
        (
            "enqueue-wrong-type",
            study(HIDDEN_10_30, '[[enqueue]]\nhidden = "ten"'),
            "enqueue[0].hidden",
            "must be an integer",
        ),
        (
            "enqueue-second-entry",
            study(HIDDEN_10_30, "[[enqueue]]\nhidden = 20\n\n[[enqueue]]\nhidden = 5"),
            "enqueue[1].hidden",
            "outside the space",
        ),
        ("enqueue-empty", study(HIDDEN_10_30, "[[enqueue]]"), "enqueue[0]", "empty"),
        ("enqueue-not-array", study(head=HEAD + "\nenqueue = 3"), "enqueue", "must be an array"),
    ],
}

# --- limits (sweep/limits.py): what would exhaust the machine, never end, or break a store
BIG_WIDTH = "1000000000"
EXHAUSTING: list[tuple[str, str, str | None, str]] = [
    ("sizes-billion-wide", study(train_table=train(sizes=f"[784, {BIG_WIDTH}, 10]")), "train.sizes", "needs about"),
    (
        "sizes-two-huge-layers",
        study(train_table=train(sizes="[784, 100000000, 100000000, 10]")),
        "train.sizes",
        "needs about",
    ),
    (
        "hidden-range-billion",
        study(space(hidden=f'{{ type = "int", low = 10, high = {BIG_WIDTH} }}')),
        "space.hidden",
        "needs about",
    ),
    (
        "hidden-choice-billion",
        study(space(hidden=f'{{ type = "categorical", choices = [30, {BIG_WIDTH}] }}')),
        "space.hidden",
        "needs about",
    ),
    ("hidden-fixed-billion", study(space(hidden=BIG_WIDTH)), "space.hidden", "needs about"),
    (
        "hidden2-range-billion",
        study(
            space(
                hidden='{ type = "int", low = 10, high = 30 }',
                hidden2=f'{{ type = "int", low = 10, high = {BIG_WIDTH} }}',
                depth='{ type = "int", low = 1, high = 2 }',
            )
        ),
        "space.hidden2",
        "needs about",
    ),
    (
        "grid-billion-widths",
        study(GRID, space(hidden=f'{{ type = "int", low = 10, high = {BIG_WIDTH} }}')),
        "space.hidden",
        "the largest network",
    ),
    (
        "grid-billion-batch-sizes",
        study(GRID, space(batch_size='{ type = "int", low = 1, high = 1000000000 }'), train_table=NO_BATCH),
        "space",
        "the grid has 1,000,000,000 points",
    ),
    (
        "grid-tiny-float-step",
        study(GRID, space(eta='{ type = "float", low = 0.1, high = 0.5, step = 1e-12 }'), train_table=NO_ETA),
        "space",
        "the grid has 400,000,000,001 points",
    ),
    (
        "grid-product-of-axes",
        study(
            GRID,
            space(
                batch_size='{ type = "int", low = 1, high = 1000 }',
                eta='{ type = "float", low = 0.1, high = 0.5, step = 0.001 }',
            ),
            train_table=NO_BATCH_NO_ETA,
        ),
        "space",
        "the grid has 401,000 points",
    ),
    (
        "grid-many-axes",
        study(
            GRID,
            space(
                batch_size='{ type = "int", low = 1, high = 100 }',
                hidden='{ type = "int", low = 1, high = 100 }',
                depth='{ type = "int", low = 1, high = 100 }',
            ),
            train_table=NO_BATCH,
        ),
        "space",
        "the grid has 1,000,000 points",
    ),
    (
        "bruteforce-billion-points",
        study(
            '[sampler]\nname = "bruteforce"',
            space(batch_size='{ type = "int", low = 1, high = 1000000000 }'),
            train_table=NO_BATCH,
        ),
        "space",
        "the grid has 1,000,000,000 points",
    ),
    (
        "float-step-subnormal",
        study(space(eta='{ type = "float", low = 0.1, high = 0.5, step = 5e-324 }'), train_table=NO_ETA),
        "space.eta.step",
        "too small for the range",
    ),
    (
        "float-step-below-precision",
        study(space(lmbda='{ type = "float", low = 0.0, high = 1e300, step = 1e-300 }')),
        "space.lmbda.step",
        "too small for the range",
    ),
    (
        "tpe-ei-candidates-billion",
        study('[sampler]\nname = "tpe"\nn_ei_candidates = 1000000000'),
        "sampler.n_ei_candidates",
        "must be at most 10,000",
    ),
    (
        "tpe-startup-billion",
        study('[sampler]\nname = "tpe"\nn_startup_trials = 1000000000'),
        "sampler.n_startup_trials",
        "must be at most 1,000,000",
    ),
    (
        "cmaes-popsize-billion",
        study('[sampler]\nname = "cmaes"\npopsize = 1000000000'),
        "sampler.popsize",
        "must be at most 10,000",
    ),
    (
        "gp-startup-billion",
        study('[sampler]\nname = "gp"\nn_startup_trials = 1000000000'),
        "sampler.n_startup_trials",
        "must be at most",
    ),
    (
        "nsga2-population-billion",
        study('[sampler]\nname = "nsga2"\npopulation_size = 1000000000'),
        "sampler.population_size",
        "must be at most 10,000",
    ),
    (
        "nsga3-population-billion",
        study('[sampler]\nname = "nsga3"\npopulation_size = 1000000000'),
        "sampler.population_size",
        "must be at most 10,000",
    ),
    (
        "nsga3-dividing-million",
        study(TWO_OBJECTIVES, '[sampler]\nname = "nsga3"\ndividing_parameter = 1000000'),
        "sampler.dividing_parameter",
        "reference points",
    ),
    (
        "median-startup-billion",
        study('[pruner]\nname = "median"\nn_startup_trials = 1000000000'),
        "pruner.n_startup_trials",
        "must be at most",
    ),
    (
        "percentile-min-trials-billion",
        study('[pruner]\nname = "percentile"\npercentile = 25.0\nn_min_trials = 1000000000'),
        "pruner.n_min_trials",
        "must be at most",
    ),
    (
        "halving-bootstrap-billion",
        study('[pruner]\nname = "successive_halving"\nbootstrap_count = 1000000000'),
        "pruner.bootstrap_count",
        "must be at most",
    ),
    (
        "wrapped-startup-billion",
        study(
            '[pruner]\nname = "patient"\npatience = 2\n\n'
            '[pruner.wrapped]\nname = "median"\nn_startup_trials = 1000000000'
        ),
        "pruner.wrapped.n_startup_trials",
        "must be at most",
    ),
    ("n-trials-billion", study(budget="[budget]\nn_trials = 1000000000"), "budget.n_trials", "at most 1,000,000"),
    ("epochs-million", study(train_table=train(epochs="1000000")), "train.epochs", "at most 10,000"),
    (
        "epochs-range-million",
        study(space(epochs='{ type = "int", low = 1, high = 1000000 }'), train_table=train(drop=("epochs",))),
        "space.epochs.high",
        "at most 10,000",
    ),
    (
        "epochs-choice-million",
        study(space(epochs='{ type = "categorical", choices = [1, 1000000] }'), train_table=train(drop=("epochs",))),
        "space.epochs.choices[1]",
        "at most 10,000",
    ),
    (
        "depth-range-thousand",
        study(space(hidden='{ type = "int", low = 10, high = 30 }', depth='{ type = "int", low = 1, high = 1000 }')),
        "space.depth.high",
        "at most 100",
    ),
    (
        "sizes-thousand-layers",
        study(train_table=train(sizes="[784, " + "10, " * 1000 + "10]")),
        "train.sizes",
        "at most 100 hidden layers",
    ),
    (
        "parameters-beyond-cap",
        study(train_table=train(sizes="[784, 70000, 10]")),
        "train.sizes",
        "the largest network (784-70000-10, 55,650,010 parameters)",
    ),
]

NOT_FINITE: list[tuple[str, str, str | None, str]] = [
    (
        "float-low-nan",
        study(space(eta='{ type = "float", low = nan, high = 0.5 }'), train_table=NO_ETA),
        "space.eta.low",
        "finite number",
    ),
    (
        "float-high-inf",
        study(space(eta='{ type = "float", low = 0.1, high = inf }'), train_table=NO_ETA),
        "space.eta.high",
        "finite number",
    ),
    (
        "float-low-minus-inf",
        study(space(lmbda='{ type = "float", low = -inf, high = 1.0 }')),
        "space.lmbda.low",
        "finite number",
    ),
    (
        "float-step-nan",
        study(space(eta='{ type = "float", low = 0.1, high = 0.5, step = nan }'), train_table=NO_ETA),
        "space.eta.step",
        "finite number",
    ),
    (
        "float-step-inf",
        study(space(eta='{ type = "float", low = 0.1, high = 0.5, step = inf }'), train_table=NO_ETA),
        "space.eta.step",
        "finite number",
    ),
    (
        "choice-nan",
        study(space(lmbda='{ type = "categorical", choices = [0.0, nan] }')),
        "space.lmbda.choices[1]",
        "got nan",
    ),
    ("fixed-eta-inf", study(space(eta="inf"), train_table=NO_ETA), "space.eta", "got inf"),
    ("lmbda-minus-inf", study(train_table=train(lmbda="-inf")), "train.lmbda", "finite number"),
    ("eta-inf", study(train_table=train(eta="inf")), "train.eta", "finite number"),
    (
        "enqueue-nan",
        study(space(eta='{ type = "float", low = 0.1, high = 0.5 }'), "[[enqueue]]\neta = nan", train_table=NO_ETA),
        "enqueue[0].eta",
        "finite number",
    ),
    ("timeout-nan", study(budget="[budget]\ntimeout = nan"), "budget.timeout", "finite number"),
    ("timeout-inf", study(budget="[budget]\ntimeout = inf"), "budget.timeout", "finite number"),
    ("threshold-lower-nan", study('[pruner]\nname = "threshold"\nlower = nan'), "pruner.lower", "finite number"),
    ("threshold-upper-inf", study('[pruner]\nname = "threshold"\nupper = inf'), "pruner.upper", "finite number"),
    (
        "threshold-lower-minus-inf",
        study('[pruner]\nname = "threshold"\nlower = -inf\nupper = 0.5'),
        "pruner.lower",
        "finite number",
    ),
    ("percentile-nan", study('[pruner]\nname = "percentile"\npercentile = nan'), "pruner.percentile", "finite number"),
    (
        "patient-min-delta-inf",
        study('[pruner]\nname = "patient"\npatience = 2\nmin_delta = inf'),
        "pruner.min_delta",
        "finite number",
    ),
    (
        "tpe-prior-weight-inf",
        study('[sampler]\nname = "tpe"\nprior_weight = inf'),
        "sampler.prior_weight",
        "finite number",
    ),
    ("cmaes-sigma0-nan", study('[sampler]\nname = "cmaes"\nsigma0 = nan'), "sampler.sigma0", "finite number"),
    (
        "nsga2-mutation-nan",
        study('[sampler]\nname = "nsga2"\nmutation_prob = nan'),
        "sampler.mutation_prob",
        "finite number",
    ),
    (
        "nsga2-crossover-inf",
        study('[sampler]\nname = "nsga2"\ncrossover_prob = inf'),
        "sampler.crossover_prob",
        "finite number",
    ),
]

NAMES: list[tuple[str, str, str | None, str]] = [
    ("name-dot", study(head='name = "."'), "name", "starting with a letter or digit"),
    ("name-dot-dot", study(head='name = ".."'), "name", "starting with a letter or digit"),
    ("name-parent-path", study(head='name = "../x"'), "name", "letters, digits"),
    ("name-hidden-file", study(head='name = ".hidden"'), "name", "starting with a letter or digit"),
    ("name-like-a-flag", study(head='name = "-x"'), "name", "starting with a letter or digit"),
    ("name-slash", study(head='name = "a/b"'), "name", "letters, digits"),
    ("name-absolute", study(head='name = "/etc"'), "name", "letters, digits"),
    ("name-nul", study(head='name = "a\\u0000b"'), "name", "letters, digits"),
    ("name-newline", study(head='name = "a\\nb"'), "name", "letters, digits"),
    ("name-too-long", study(head=f'name = "{"x" * 201}"'), "name", "at most 200 characters"),
    ("name-far-too-long", study(head=f'name = "{"x" * 100_000}"'), "name", "at most 200 characters"),
    ("parent-dot-dot", study(head=HEAD + '\nparent = ".."'), "parent", "starting with a letter or digit"),
    ("parent-too-long", study(head=HEAD + f'\nparent = "{"p" * 300}"'), "parent", "at most 200 characters"),
]

SEEDS: list[tuple[str, str, str | None, str]] = [
    ("sampler-seed-2-32", study("[sampler]\nseed = 4294967296"), "sampler.seed", "at most 4,294,967,295"),
    ("sampler-seed-int64-max", study("[sampler]\nseed = 9223372036854775807"), "sampler.seed", "32-bit"),
    (
        "grid-seed-2-40",
        study(GRID + "\nseed = 1099511627776", HOMEWORK, train_table=NO_BATCH_NO_ETA),
        "sampler.seed",
        "32-bit",
    ),
]

LIMITS = EXHAUSTING + NOT_FINITE + NAMES + SEEDS
BY_PART.update(
    {"limits: exhausting": EXHAUSTING, "limits: not finite": NOT_FINITE, "limits: names": NAMES, "limits: seeds": SEEDS}
)

#: Every refused study file: each runs through the parser (tests/sweep/test_spec.py).
BAD_STUDIES = [row for rows in BY_PART.values() for row in rows]
#: Through the whole launcher (tests/sweep/test_cli.py): the first row of each part, and each
#: file refused as a whole (before or while TOML reads it). The launcher words every parser
#: refusal the same way, so these show it does for them all.
CLI_SAMPLE = [row for rows in BY_PART.values() for row in rows if row is rows[0] or row[2] is None]

# --- flags: refused with one line naming the problem, whatever the study file --------------------

ESC = "\x1b"  # a terminal control sequence's start: "\x1b[2J" clears the screen, "\x1b]0;...\x07" sets the title
#: Flags and arguments refused by the launcher (tests/sweep/test_bad_input.py), in a working directory
#: that holds the stored study "tiny" (tiny.toml; its stores in ./mlruns), an Optuna SQLite storage
#: optuna.db, a FIFO ``fifo`` and the text file notes.txt: {id: (arguments, phrase)}. "{port}" is a
#: loopback port nothing listens on, "{busy}" one something listens on.
BAD_FLAGS: dict[str, tuple[list[str], str]] = {
    "best-export-directory": (["best", "tiny", "--export", "mlruns"], "--export mlruns: is a directory"),
    "best-export-existing-file": (["best", "tiny", "--export", "tiny.toml"], "--export tiny.toml: already exists"),
    "best-export-fifo": (["best", "tiny", "--export", "fifo"], "--export fifo: already exists"),
    "best-export-device": (["best", "tiny", "--export", "/dev/null"], "--export /dev/null: already exists"),
    "best-export-no-directory": (["best", "tiny", "--export", "missing/w.npz"], "no directory missing"),
    "best-export-empty": (["best", "tiny", "--export", ""], "argument 4 is empty"),
    "refine-out-existing-file": (["refine", "tiny", "--out", "tiny.toml"], "tiny.toml already exists"),
    "refine-out-fifo": (["refine", "tiny", "--out", "fifo"], "fifo already exists"),
    "refine-out-directory": (["refine", "tiny", "--out", "mlruns"], "'mlruns' is a directory"),
    "refine-out-empty": (["refine", "tiny", "--out", ""], "argument 4 is empty"),
    "report-out-file": (["report", "tiny", "--out", "notes.txt"], "'notes.txt' is a file"),
    "report-out-under-a-file": (["report", "tiny", "--out", "notes.txt/r"], "cannot write reports to notes.txt/r"),
    "report-out-empty": (["report", "tiny", "--out", ""], "argument 4 is empty"),
    "report-heatmap-unknown": (["report", "tiny", "--heatmap", "hidden", "eta"], "needs two parameters of study tiny"),
    "report-heatmap-twice": (["report", "tiny", "--heatmap", "eta", "eta"], "--heatmap eta eta: needs two different"),
    "report-heatmap-one": (["report", "tiny", "--heatmap", "eta"], "'--heatmap' requires 2 arguments"),
    "proxy-journal": (["proxy", "--storage", "mlruns/optuna.journal"], "the proxy serves a database"),
    "proxy-mlflow-db": (["proxy", "--storage", "sqlite:///mlruns/mlflow.db"], "MLflow tracking store, not an Optuna"),
    "proxy-study-file": (["proxy", "--storage", "sqlite:///tiny.toml"], "tiny.toml is a TOML file"),
    "proxy-unreachable": (["proxy", "--storage", "postgresql://nobody:secret@127.0.0.1:1/none"], "cannot open"),
    "proxy-of-a-proxy": (["proxy", "--storage", "grpc://127.0.0.1:{port}"], "not a journal file or another proxy"),
    "proxy-beyond-loopback": (["proxy", "--storage", "sqlite:///optuna.db", "--host", "192.0.2.1"], "add --expose"),
    "proxy-port-zero": (["proxy", "--storage", "sqlite:///optuna.db", "--port", "0"], "'--port': 0 is not in"),
    "proxy-port-busy": (["proxy", "--storage", "sqlite:///optuna.db", "--port", "{busy}"], "cannot listen on"),
    "grpc-run-nothing-listening": (["run", "tiny.toml", "--storage", "grpc://127.0.0.1:{port}"], "no sweep proxy"),
    "grpc-worker-nothing-listening": (
        ["worker", "--study", "tiny", "--storage", "grpc://127.0.0.1:{port}"],
        "no sweep",
    ),
    "grpc-report-nothing-listening": (["report", "tiny", "--storage", "grpc://127.0.0.1:{port}"], "no sweep proxy"),
    "grpc-list-nothing-listening": (["list", "--storage", "grpc://127.0.0.1:{port}"], "no sweep proxy answers"),
    "grpc-no-port": (["run", "tiny.toml", "--storage", "grpc://127.0.0.1"], "a proxy's URL is grpc://HOST:PORT"),
    "grpc-no-host": (["list", "--storage", "grpc://:{port}"], "a proxy's URL is grpc://HOST:PORT"),
    "grpc-port-beyond-range": (["list", "--storage", "grpc://127.0.0.1:70000"], "a proxy's URL is grpc://HOST:PORT"),
    "grpc-with-a-path": (["list", "--storage", "grpc://127.0.0.1:{port}/tiny"], "a proxy's URL is grpc://HOST:PORT"),
    "control-in-study-name": (["report", f"tiny{ESC}[2J"], r"argument 2 ('tiny\x1b[2J') has a control character"),
    "control-in-worker-study": (["worker", "--study", "tiny\x07"], r"argument 3 ('tiny\x07') has a control"),
    "newline-in-study-name": (["best", "tiny\nsweep: done"], r"argument 2 ('tiny\nsweep: done') has a control"),
    "control-in-study-file": (["run", f"{ESC}]0;pwned\x07tiny.toml"], "argument 2 ("),
    "control-in-export": (["best", "tiny", "--export", f"w{ESC}[31m.npz"], r"argument 4 ('w\x1b[31m.npz')"),
    "control-in-refine-out": (["refine", "tiny", "--out", f"r{ESC}[2J.toml"], r"argument 4 ('r\x1b[2J.toml')"),
    "control-in-report-out": (["report", "tiny", "--out", f"r{ESC}[2J"], r"argument 4 ('r\x1b[2J')"),
    "control-in-heatmap": (["report", "tiny", "--heatmap", f"eta{ESC}[2J", "eta"], r"argument 4 ('eta\x1b[2J')"),
    "control-in-storage": (["list", "--storage", f"x{ESC}[2J.journal"], r"argument 3 ('x\x1b[2J.journal')"),
    "control-in-tracking-uri": (["run", "tiny.toml", "--tracking-uri", "sqlite:///m\r.db"], r"('sqlite:///m\r.db')"),
    "control-in-host": (["ui", "--host", f"127.0.0.1{ESC}[2J"], r"argument 3 ('127.0.0.1\x1b[2J')"),
    "delete-in-name": (["report", "tiny\x7f"], r"argument 2 ('tiny\x7f') has a control character"),
    "c1-control-in-name": (["report", "tiny\x9b2J"], r"argument 2 ('tiny\x9b2J') has a control character"),
}
