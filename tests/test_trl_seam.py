"""The seam between ``AudioGRPOTrainer`` and the TRL/transformers classes it extends, checked method by method.

``AudioGRPOTrainer`` overrides methods of ``GRPOTrainer`` and transformers' ``Trainer``, most of them private. A
version bump can break an override without any error: TRL renames or stops calling the method (the override is
dead, and the audio silently stops reaching the model), changes its parameters (callers pass something the override
refuses or drops), or deprecates it. So, for every overridden method, derived from the class rather than listed by
hand (a new override without a row in ``SEAMS`` fails):

* its signature takes what the base's signature takes (identical, or a declared catch-all ``**kwargs`` whose base
  parameters are pinned, so a parameter TRL adds cannot vanish into it unnoticed);
* the base classes' source still calls it, as ``self.<name>(...)``, from exactly the methods listed, and every call
  site binds to our signature;
* the base method announces no deprecation;
* one tiny training step (one optimizer step and one checkpoint, shared by all the runtime checks) calls it, from
  the listed TRL/transformers method, with arguments our signature binds; and no DeprecationWarning/FutureWarning
  from TRL, transformers, accelerate, peft, vLLM or our own code fires during that step (nor any naming one of the
  overridden methods).

The suite-wide warning filters (pyproject.toml) are checked here too: they name every overridden method, and work.

The class, and the mixins it is built from (``OURS``: ``DynamicRounds``), also read and set TRL's attributes
(``self.args``, ``self._metrics``, ``self._log_metric``, ``self.use_vllm``, ...). Each has a row in ``BORROWED`` (how
our source uses it, and of what kind it must be), and a new ``self.<name>`` that our classes do not define fails
until it has one (their source is parsed). Checked against TRL's own ``GRPOTrainer`` built from the same tiny model:

* TRL's __init__ sets each value of the declared kind (a method: TRL's class defines it with the declared
  parameters, and our calls bind to it); ours holds the same kind;
* for an attribute we set (``beta``, ``ref_model``, ``use_vllm``), the TRL methods that read it are the reviewed ones;
  with ``use_vllm`` set, what the reached readers read of TRL's vLLM state is set without vLLM too;
* no name our class assigns or defines is TRL's, unless declared (a silent shadowing);
* the fields we read from ``self.args``, ``self.state`` and ``self.accelerator`` exist on TRL's;
* TRL hands reward functions exactly the control arguments ``R_total`` sets aside (``reward_bridge``), and the
  tracker writers ``RunRecordToTrackers`` looks for are still set by transformers' callbacks.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import re
import sys
import textwrap
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import accelerate
import datasets
import peft
import pytest
import torch
import transformers
import trl
from transformers import PreTrainedTokenizerBase, ProcessorMixin, Trainer, TrainerState
from transformers.integrations import TensorBoardCallback, WandbCallback
from transformers.trainer_callback import CallbackHandler
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.base_trainer import _BaseTrainer

import grpo_audio
import rewards
from grpo_audio.recipe import load_recipe
from grpo_audio.train.reward_bridge import TRL_CONTROL_KWARGS
from grpo_audio.train.run import build_training
from grpo_audio.train.trainer import AudioGRPOTrainer

# Our classes in AudioGRPOTrainer's MRO: the trainer and the mixins it is built from (grpo_audio.train.dynamic_rounds).
# Every check below reads all of their source, so a TRL attribute a mixin uses is held to the same contract.
OURS = tuple(cls for cls in AudioGRPOTrainer.__mro__ if cls.__module__.startswith("grpo_audio."))
THEIRS = tuple(cls for cls in AudioGRPOTrainer.__mro__[1:-1] if cls not in OURS)

# The classes whose own source may call an override; GRPOTrainer's MRO without our class and ``object``.
CALLER_CLASSES = (GRPOTrainer, _BaseTrainer, Trainer)
IMAGE_KWARGS = frozenset(
    {
        "pixel_values",
        "image_grid_thw",
        "num_images",
        "pixel_attention_mask",
        "spatial_shapes",
        "num_tiles",
        "image_sizes",
        "token_type_ids",
        "mm_token_type_ids",
        "image_position_ids",
    }
)


@dataclass(frozen=True)
class Seam:
    defined_on: type  # the nearest base class (in AudioGRPOTrainer's MRO) that defines the method
    callers: frozenset[str]  # every "Class.method" of CALLER_CLASSES whose source calls self.<name>(...)
    called_in_step: str  # the caller seen in the tiny training step
    absorbed: frozenset[str] = frozenset()  # base parameters our override takes only through its **kwargs


SEAMS = {
    "_generate_and_score_completions": Seam(
        GRPOTrainer, frozenset({"GRPOTrainer._prepare_inputs"}), "GRPOTrainer._prepare_inputs"
    ),
    "_generate_single_turn": Seam(
        GRPOTrainer,
        frozenset({"GRPOTrainer._generate", "GRPOTrainer._tool_call_loop"}),
        "GRPOTrainer._generate",
    ),
    "_calculate_rewards": Seam(
        GRPOTrainer,
        frozenset({"GRPOTrainer._generate_and_score_completions"}),
        "GRPOTrainer._generate_and_score_completions",
    ),
    "_get_per_token_logps_and_entropies": Seam(
        GRPOTrainer,
        # the old-policy and reference passes, and the policy pass of the loss
        frozenset({"GRPOTrainer._generate_and_score_completions", "GRPOTrainer._compute_loss"}),
        "GRPOTrainer._compute_loss",
        absorbed=IMAGE_KWARGS,  # image inputs: our override refuses any that is not None
    ),
    "_compute_loss": Seam(GRPOTrainer, frozenset({"GRPOTrainer.compute_loss"}), "GRPOTrainer.compute_loss"),
    "training_step": Seam(GRPOTrainer, frozenset({"Trainer._run_epoch"}), "Trainer._run_epoch"),
    # rollout.overlap reads the next optimizer step's batches one step ahead
    "get_batch_samples": Seam(Trainer, frozenset({"Trainer._run_epoch"}), "Trainer._run_epoch"),
    "create_optimizer": Seam(
        Trainer,
        frozenset({"Trainer._prepare_for_training", "Trainer.create_optimizer_and_scheduler"}),
        "Trainer._prepare_for_training",
    ),
    # the staging directory of a crash-safe checkpoint works because Trainer._save_checkpoint asks this method
    "_get_output_dir": Seam(
        Trainer,
        frozenset({"Trainer._save_checkpoint", "Trainer._finalize_training", "GRPOTrainer._save_checkpoint"}),
        "Trainer._save_checkpoint",
    ),
    "_save_checkpoint": Seam(
        GRPOTrainer, frozenset({"Trainer._maybe_log_save_evaluate"}), "Trainer._maybe_log_save_evaluate"
    ),
}

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def overridden_methods() -> set[str]:
    """Every attribute our classes (``OURS``) define that a TRL/transformers base class also defines.

    ``__init__`` is left out: it is not a hook TRL calls back, and every test that builds a trainer exercises it."""
    # methods and plain class attributes; not the classes' own bookkeeping (__module__, __doc__, __dict__, ...)
    own = {name for cls in OURS for name, value in vars(cls).items() if callable(value) or not name.startswith("__")}
    return {name for name in own - {"__init__"} if any(name in vars(base) for base in THEIRS)}


def our_method(name: str):
    """Our definition of ``name``: the first of our classes in the MRO that defines it."""
    return next(vars(cls)[name] for cls in OURS if name in vars(cls))


def base_method(name: str):
    return vars(SEAMS[name].defined_on)[name]


@functools.cache
def class_methods(cls: type) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    return [node for node in tree.body[0].body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


@dataclass
class CallSite:
    caller: str  # "Class.method"
    positional: int  # positional arguments, self excluded
    keywords: tuple[str, ...]
    star_args: bool
    star_kwargs: bool


def call_sites(name: str, classes: tuple[type, ...] = CALLER_CLASSES) -> list[CallSite]:
    """Calls ``self.<name>(...)`` in the source of ``classes`` (``super().<name>(...)`` does not reach us)."""
    sites = []
    for cls in classes:
        for method in class_methods(cls):
            for node in ast.walk(method):
                func = getattr(node, "func", None)
                if (
                    isinstance(node, ast.Call)
                    and isinstance(func, ast.Attribute)
                    and func.attr == name
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "self"
                ):
                    sites.append(
                        CallSite(
                            caller=f"{cls.__name__}.{method.name}",
                            positional=sum(not isinstance(a, ast.Starred) for a in node.args),
                            keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
                            star_args=any(isinstance(a, ast.Starred) for a in node.args),
                            star_kwargs=any(k.arg is None for k in node.keywords),
                        )
                    )
    return sites


def refusals(base: inspect.Signature, ours: inspect.Signature, max_positional: int, absorbed: frozenset[str]):
    """What a caller of the base method may pass (at most ``max_positional`` arguments by position, self included)
    that our override refuses, ignores in a different way, or defaults differently; and which base parameters land
    in our ``**kwargs`` (to compare with the declared ``absorbed``)."""
    problems, landed = [], set()
    base_params = list(base.parameters.values())
    our_params = list(ours.parameters.values())
    our_positional = [p for p in our_params if p.kind in POSITIONAL]
    by_name = {p.name: p for p in our_params if p.kind not in VARIADIC}
    takes_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in our_params)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in our_params)
    for index, param in enumerate(base_params):
        if param.kind is inspect.Parameter.VAR_POSITIONAL and not takes_args:
            problems.append(f"base takes *{param.name}, ours takes no *args")
        if param.kind is inspect.Parameter.VAR_KEYWORD and not takes_kwargs:
            problems.append(f"base takes **{param.name}, ours takes no **kwargs")
        if param.kind in VARIADIC:
            continue
        if param.kind in POSITIONAL and index < max_positional:
            if index < len(our_positional):
                if our_positional[index].name != param.name:
                    problems.append(f"position {index}: base {param.name!r}, ours {our_positional[index].name!r}")
            elif not takes_args:
                problems.append(f"{param.name!r} is passed at position {index}, ours takes only {index} positionally")
        if param.kind is not inspect.Parameter.POSITIONAL_ONLY:
            mine = by_name.get(param.name)
            if mine is None or mine.kind is inspect.Parameter.POSITIONAL_ONLY:
                if takes_kwargs:
                    landed.add(param.name)
                else:
                    problems.append(f"base parameter {param.name!r} cannot be passed by name to ours")
                continue
        mine = by_name.get(param.name)
        if mine is not None and param.default is not inspect.Parameter.empty:
            if mine.default is inspect.Parameter.empty:
                problems.append(f"{param.name!r} is optional in the base, required in ours")
            elif mine.default != param.default:
                problems.append(f"{param.name!r} defaults to {param.default!r} in the base, {mine.default!r} in ours")
    base_names = {p.name for p in base_params}
    for mine in our_params:
        if mine.kind not in VARIADIC and mine.default is inspect.Parameter.empty and mine.name not in base_names:
            problems.append(f"ours requires {mine.name!r}, which the base does not take")
    if landed != absorbed:
        problems.append(f"base parameters taken only by our **kwargs: {sorted(landed)}, declared {sorted(absorbed)}")
    return problems


def test_the_signature_check_sees_drift():
    """The checker itself: each drift a TRL bump could bring is reported."""

    def base(self, model, inputs, batch_size=None, flag=False, pixel_values=None): ...

    def same(self, model, inputs, batch_size=None, flag=False, pixel_values=None): ...

    def renamed(self, model, rows, batch_size=None, flag=False, pixel_values=None): ...

    def new_default(self, model, inputs, batch_size=None, flag=True, pixel_values=None): ...

    def required(self, model, inputs, batch_size, flag=False, pixel_values=None): ...

    def extra(self, model, inputs, audio, batch_size=None, flag=False, pixel_values=None): ...

    def catch_all(self, model, inputs, batch_size=None, flag=False, **kwargs): ...

    def catch_more(self, model, inputs, batch_size=None, **kwargs): ...

    def check(ours, max_positional=3, absorbed=frozenset()):
        return refusals(inspect.signature(base), inspect.signature(ours), max_positional, absorbed)

    assert check(same) == []
    assert check(renamed) == [
        "position 2: base 'inputs', ours 'rows'",
        "base parameter 'inputs' cannot be passed by name to ours",
        "ours requires 'rows', which the base does not take",
    ]
    assert check(new_default) == ["'flag' defaults to False in the base, True in ours"]
    assert check(required) == ["'batch_size' is optional in the base, required in ours"]
    assert "ours requires 'audio', which the base does not take" in check(extra)
    assert check(catch_all, absorbed=frozenset({"pixel_values"})) == []
    assert check(catch_all, max_positional=6, absorbed=frozenset({"pixel_values"})) == [
        "'pixel_values' is passed at position 5, ours takes only 5 positionally"
    ]
    assert check(catch_more, absorbed=frozenset({"pixel_values"})) == [
        "base parameters taken only by our **kwargs: ['flag', 'pixel_values'], declared ['pixel_values']"
    ]


def test_every_overridden_method_has_a_contract():
    """Adding (or losing, e.g. after a TRL rename) an override without updating SEAMS fails here."""
    assert overridden_methods() == set(SEAMS)
    for name, seam in SEAMS.items():
        defining = next(base for base in THEIRS if name in vars(base))
        assert defining is seam.defined_on, f"{name}: defined on {defining.__name__}, not {seam.defined_on.__name__}"


@pytest.mark.parametrize("name", sorted(SEAMS))
def test_override_signature_takes_what_the_base_takes(name):
    sites = call_sites(name)
    max_positional = max((1 + s.positional if not s.star_args else sys.maxsize for s in sites), default=sys.maxsize)
    base, ours = inspect.signature(base_method(name)), inspect.signature(our_method(name))
    if not SEAMS[name].absorbed:  # no catch-all: the parameter lists must be the same, name, kind and default
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in base.parameters.values()
        ], f"{name}: base {base}, ours {ours}"
    assert refusals(base, ours, max_positional, SEAMS[name].absorbed) == [], f"{name}: base {base}, ours {ours}"


@pytest.mark.parametrize("name", sorted(SEAMS))
def test_base_classes_still_call_the_override_with_arguments_it_takes(name):
    sites = call_sites(name)
    assert {s.caller for s in sites} == SEAMS[name].callers, f"{name} is called from elsewhere now: review"
    ours = inspect.signature(our_method(name))
    takes_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in ours.parameters.values())
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.parameters.values())
    base_keywords = [
        p.name for p in inspect.signature(base_method(name)).parameters.values() if p.kind not in VARIADIC
    ]
    for site in sites:
        bind = ours.bind_partial if site.star_args or site.star_kwargs else ours.bind  # a *, ** may hold the rest
        try:
            bind(None, *range(site.positional), **dict.fromkeys(site.keywords))
        except TypeError as error:
            pytest.fail(f"{name} as {site.caller} calls it: {error}")
        if site.star_args:
            assert takes_args, f"{site.caller} passes *args to {name}"
        if site.star_kwargs:  # a **mapping: it may hold any base parameter
            unknown = [k for k in base_keywords if k not in ours.parameters and not takes_kwargs]
            assert not unknown, f"{site.caller} passes **kwargs to {name}, ours cannot take {unknown}"


@pytest.mark.parametrize("name", sorted(SEAMS))
def test_base_method_announces_no_deprecation(name):
    base = base_method(name)
    while hasattr(base, "__wrapped__"):  # a decorator may be a deprecator: only TRL's timing one is known harmless
        wrapper = Path(base.__code__.co_filename)
        assert (wrapper.parent.name, wrapper.name) == ("extras", "profiling.py"), f"{name} is wrapped by {wrapper}"
        base = base.__wrapped__
    assert "deprecat" not in inspect.getsource(base).lower(), f"{name} is deprecated (or deprecates an argument)"


# ---- one tiny training step, shared by the runtime checks ----

DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# A deprecation concerns us when the module it is attributed to (its stacklevel's frame) is one of the libraries the
# seam rests on, or our own code (a library attributes a deprecated call or argument to its caller).
WATCHED_MODULES = ("trl", "transformers", "accelerate", "peft", "vllm", "grpo_audio", "rewards")
WATCHED_DIRS = [Path(module.__file__).parent for module in (trl, transformers, accelerate, peft, grpo_audio, rewards)]


@dataclass
class SpiedCall:
    caller: str  # "Class.method" of the calling frame
    module: str  # the calling frame's module
    binding_error: str | None  # why our signature would not bind these arguments


@dataclass
class StepRecord:
    calls: dict[str, list[SpiedCall]]
    warnings: list[warnings.WarningMessage]
    global_step: int | None
    aborted_by: str | None  # a deprecation attributed to a watched module, raised where it was announced


def tiny_recipe(root: Path, *overrides: str):
    """A one-step recipe on the tiny built-in model and synthetic data, writing under ``root``."""
    return load_recipe(
        None,
        [
            f"run.output_dir={root / 'run'}",
            "data.synthetic.num_questions=8",
            "rollout.num_generations=4",
            "rollout.max_completion_length=12",
            "trainer.per_device_train_batch_size=8",
            "trainer.max_steps=1",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def one_step(tmp_path_factory) -> StepRecord:
    # one checkpoint: _save_checkpoint and _get_output_dir
    recipe = tiny_recipe(tmp_path_factory.mktemp("seam"), "trainer.save_steps=1")
    calls = {name: [] for name in SEAMS}
    trainer, aborted_by = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in DEPRECATIONS:
            warnings.filterwarnings("error", category=category, module=rf"({'|'.join(WATCHED_MODULES)})(\.|$)")
        try:
            trainer = build_training(recipe).trainer
            for name in SEAMS:
                trainer.__dict__[name] = spy(name, getattr(trainer, name), calls[name])
            trainer.train()
        except DEPRECATIONS as error:
            where = "".join(traceback.format_tb(error.__traceback__)[-3:])
            aborted_by = f"{type(error).__name__}: {error}\n{where}"
    for w in caught:  # shown in pytest's warnings summary all the same
        try:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Warning:  # an error by the ini filters: test_a_training_step_raises_no_deprecation... reports it
            pass
    return StepRecord(calls, caught, trainer.state.global_step if trainer else None, aborted_by)


def qualified_name(code) -> str:
    """The "Class.method" of the CALLER_CLASSES method running ``code`` (``co_qualname`` needs Python 3.11)."""
    for cls in CALLER_CLASSES:
        function = vars(cls).get(code.co_name)
        if function is not None and getattr(inspect.unwrap(function), "__code__", None) is code:
            return f"{cls.__name__}.{code.co_name}"
    return code.co_name


def spy(name, method, record):
    """``method`` (bound), recording who calls it and whether our signature binds the arguments."""
    signature = inspect.signature(our_method(name))

    def call(*args, **kwargs):
        frame = sys._getframe(1)
        try:
            signature.bind(None, *args, **kwargs)
            error = None
        except TypeError as problem:
            error = str(problem)
        record.append(SpiedCall(qualified_name(frame.f_code), frame.f_globals.get("__name__", "?"), error))
        return method(*args, **kwargs)

    return call


@pytest.mark.parametrize("name", sorted(SEAMS))
def test_a_training_step_calls_the_override_from_trl(one_step, name):
    assert one_step.aborted_by is None, one_step.aborted_by
    assert one_step.global_step == 1
    calls = one_step.calls[name]
    assert calls, f"{name} was never called in a training step: TRL/transformers no longer use it"
    callers = {c.caller for c in calls}
    assert SEAMS[name].called_in_step in callers, f"{name} called from {callers}"
    assert callers <= SEAMS[name].callers, f"{name} called from {callers - SEAMS[name].callers} too"
    assert all(c.module.split(".")[0] in ("trl", "transformers") for c in calls), {c.module for c in calls}
    assert [c.binding_error for c in calls if c.binding_error] == []


def test_a_training_step_raises_no_deprecation_that_concerns_us(one_step):
    assert one_step.aborted_by is None, one_step.aborted_by
    concerning = []
    for w in one_step.warnings:
        if not issubclass(w.category, DEPRECATIONS):
            continue
        text = str(w.message)
        named = [name for name in SEAMS if name in text]  # whatever its origin (a torch hook, a callback)
        origin = Path(w.filename).resolve()
        if named or any(origin.is_relative_to(root) for root in WATCHED_DIRS):
            concerning.append(f"{w.category.__name__} at {w.filename}:{w.lineno}: {text}")
    assert concerning == []


# ---- the suite-wide warning filters (pyproject.toml, [tool.pytest.ini_options]) ----


def test_the_error_filters_name_every_overridden_method(pytestconfig):
    filters = pytestconfig.getini("filterwarnings")
    named = [f for f in filters if f.startswith("error:.*")]
    assert {f.rsplit(":", 1)[1] for f in named} == {"DeprecationWarning", "FutureWarning"}
    for line in named:
        names = re.search(r"\\b\((.*)\)\\b", line).group(1).split("|")
        assert sorted(names) == sorted(SEAMS), line
    assert not any(f.startswith("ignore::") for f in filters), "a blanket ignore hides upstream deprecations"


def test_the_error_filters_are_live(request):
    if request.config.getoption("pythonwarnings"):
        pytest.skip("-W on the command line takes precedence over the ini filters")
    for category in (DeprecationWarning, FutureWarning):
        with pytest.raises(category):  # raised from anywhere, naming an override
            warnings.warn("GRPOTrainer._get_per_token_logps_and_entropies is deprecated", category, stacklevel=1)
        with pytest.raises(category):  # attributed to our code (a library's stacklevel points at its caller)
            warnings.warn_explicit("x is deprecated", category, "trainer.py", 1, module="grpo_audio.train.trainer")
        with pytest.warns(category):  # anything else: shown, not an error
            warnings.warn_explicit("x is deprecated", category, "trainer.py", 1, module="transformers.trainer")


# ---- the TRL attributes AudioGRPOTrainer reads or sets ----


@dataclass(frozen=True)
class Kind:
    """What a borrowed attribute must be, on TRL's own trainer and on ours."""

    text: str
    accepts: Callable[[object], bool]


def instance(*types: type) -> Kind:
    return Kind(" | ".join(t.__name__ for t in types), lambda value: isinstance(value, types))


def list_of(item: type) -> Kind:
    return Kind(f"list[{item.__name__}]", lambda v: isinstance(v, list) and all(isinstance(x, item) for x in v))


def method(*params: str) -> Kind:
    """A method whose parameters (self aside) are named ``params``, in order: how our code calls it or hands it on."""

    def accepts(value) -> bool:
        return inspect.ismethod(value) and list(inspect.signature(value).parameters) == list(params)

    return Kind(f"method({', '.join(params)})", accepts)


# TRL's per-mode metric store: _record_metrics, _log_share and the step-time split append to its lists
METRICS_BY_MODE = Kind(
    "{'train', 'eval'} -> defaultdict(list)",
    lambda v: (
        isinstance(v, dict)
        and set(v) == {"train", "eval"}
        and all(isinstance(m, defaultdict) and m.default_factory is list for m in v.values())
    ),
)


@dataclass(frozen=True)
class Borrowed:
    uses: str  # how our classes' source uses self.<name>: "read", "set" or "read, set"
    kind: Kind
    # "set" only: every method of CALLER_CLASSES but __init__ (which runs before ours sets it) that reads the
    # attribute, so our value reaches exactly these
    readers: frozenset[str] = frozenset()


BORROWED = {
    "_entropy_bonus_enabled": Borrowed("read", instance(bool)),  # refused with a per-sequence loss
    "_get_num_items_in_batch": Borrowed("read", method("batch_samples", "device")),  # get_batch_samples' count
    "_log_metric": Borrowed("read", method("name", "value")),  # R_total's log_metric on the multi-process path
    "_metrics": Borrowed("read", METRICS_BY_MODE),
    "_tokenize_prompts": Borrowed("read", method("prompts")),  # dynamic sampling's rounds, the prefetch
    "_tokenizer": Borrowed("read", instance(PreTrainedTokenizerBase)),  # its pad id ends a completion
    "accelerator": Borrowed("read", instance(accelerate.Accelerator)),
    "add_callback": Borrowed("read", method("callback")),
    "args": Borrowed("read", instance(GRPOConfig)),
    "callback_handler": Borrowed("read", instance(CallbackHandler)),  # RunRecordToTrackers finds the trackers
    "eos_token_ids": Borrowed("read", list_of(int)),  # R_total's stop ids
    "is_deepspeed_enabled": Borrowed("read", instance(bool)),  # the frozen KL reference prepared as TRL's
    "is_fsdp_enabled": Borrowed("read", instance(bool)),
    "log": Borrowed("read", method("logs", "start_time")),  # PeriodicEvaluation logs a record of its own
    "loss_type": Borrowed("read", instance(str)),
    "model": Borrowed("read", instance(torch.nn.Module)),
    "model_wrapped": Borrowed("read", instance(torch.nn.Module)),
    "num_generations": Borrowed("read", instance(int)),
    "processing_class": Borrowed("read", instance(PreTrainedTokenizerBase, ProcessorMixin)),
    "reward_func_names": Borrowed("read", list_of(str)),
    "reward_funcs": Borrowed("read", instance(list)),
    "state": Borrowed("read", instance(TrainerState)),
    "temperature": Borrowed("read", instance(float)),  # must equal the log-prob passes' sampling temperature
    "train_dataset": Borrowed("read", instance(datasets.Dataset)),  # dynamic sampling's refill prompts
    # full fine-tuning with a KL term: the frozen copy made in __init__, and its beta (TRL sees beta 0 while it
    # is constructed, so that it loads no reference of its own)
    "beta": Borrowed(
        "set",
        instance(float),
        frozenset({"GRPOTrainer._compute_loss", "GRPOTrainer._generate_and_score_completions"}),
    ),
    "ref_model": Borrowed(
        "read, set", instance(torch.nn.Module, type(None)), frozenset({"GRPOTrainer._generate_and_score_completions"})
    ),
    # True for an engine that returns its sampled tokens' log-probs: TRL's importance-sampling correction
    "use_vllm": Borrowed(
        "set",
        instance(bool),
        frozenset(
            {
                "GRPOTrainer._compute_loss",
                "GRPOTrainer._generate",
                "GRPOTrainer._generate_and_score_completions",
                "GRPOTrainer._generate_single_turn",
                "GRPOTrainer._tool_call_loop",
            }
        ),
    ),
}
# With use_vllm set, TRL's importance-sampling correction runs in these readers, which ours reach through super().
# Its other readers are not reached: _generate reads it only for a rollout_func, _tool_call_loop only with tools, and
# our _generate_single_turn replaces TRL's. What the reached ones read of TRL's vLLM state must exist without vLLM.
USE_VLLM_REACHED = frozenset({"GRPOTrainer._compute_loss", "GRPOTrainer._generate_and_score_completions"})
USE_VLLM_NEEDS = {
    "vllm_importance_sampling_correction": instance(bool),
    "vllm_importance_sampling_mode": instance(str),
    "vllm_importance_sampling_clip_min": instance(float, type(None)),
    "vllm_importance_sampling_clip_max": instance(float, type(None)),
}
# TRL/transformers/accelerate objects whose fields our code reads: each field must exist on TRL's trainer's object
TRL_OBJECTS = ("args", "state", "accelerator")


@functools.cache
def self_attributes(classes: tuple[type, ...]) -> dict[str, dict[str, frozenset[str]]]:
    """name -> "Class.method" -> {"read", "set"}: every ``self.<name>`` in the methods of ``classes`` (nested
    functions included)."""
    uses: dict[str, dict[str, set[str]]] = {}
    for cls in classes:
        for function in class_methods(cls):
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                    how = "read" if isinstance(node.ctx, ast.Load) else "set"
                    uses.setdefault(node.attr, {}).setdefault(f"{cls.__name__}.{function.name}", set()).add(how)
    return {name: {m: frozenset(how) for m, how in by.items()} for name, by in uses.items()}


def our_uses() -> dict[str, set[str]]:
    """``self.<name>`` in our classes' source (``OURS``) -> how it is used ({"read", "set"})."""
    return {name: set().union(*by.values()) for name, by in self_attributes(OURS).items()}


def our_definitions() -> set[str]:
    """The names our classes themselves give a meaning: their methods and the attributes they assign."""
    methods = {function.name for cls in OURS for function in class_methods(cls)}
    return methods | {name for name, how in our_uses().items() if "set" in how}


def fields_read_from(obj: str) -> set[str]:
    """``<field>`` of every ``self.<obj>.<field>`` in our classes' source; for ``args``, also through a local
    name bound to it (``grpo_args = kwargs["args"]``)."""

    def is_obj(node) -> bool:
        own = isinstance(node, ast.Attribute) and node.attr == obj and getattr(node.value, "id", None) == "self"
        passed = (
            isinstance(node, ast.Subscript)
            and getattr(node.value, "id", None) == "kwargs"
            and getattr(node.slice, "value", None) == obj
        )
        return own or passed

    fields = set()
    for function in (function for cls in OURS for function in class_methods(cls)):
        aliases = {
            target.id
            for node in ast.walk(function)
            if isinstance(node, ast.Assign) and is_obj(node.value)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and (is_obj(node.value) or getattr(node.value, "id", None) in aliases):
                fields.add(node.attr)
    return fields


@dataclass
class Trainers:
    plain: GRPOTrainer  # TRL's own, with a placeholder reward
    ours: AudioGRPOTrainer


@pytest.fixture(scope="module")
def trainers(tmp_path_factory) -> Trainers:
    """TRL's GRPOTrainer and ours from the same tiny model (copied), config and data; neither trained."""
    ours = build_training(tiny_recipe(tmp_path_factory.mktemp("attributes"))).trainer

    def reward(completions, **kwargs):
        return [0.0] * len(completions)

    plain = GRPOTrainer(
        model=copy.deepcopy(ours.accelerator.unwrap_model(ours.model)),
        reward_funcs=[reward],
        args=ours.args,
        train_dataset=ours.train_dataset,
        processing_class=ours.processing_class,
    )
    return Trainers(plain, ours)


def test_every_trl_attribute_the_subclass_uses_has_a_contract():
    """A new ``self.<name>`` that our class does not define is TRL's (or transformers'): it needs a row in BORROWED.
    A row no longer used goes; a row's declared use (read/set) is the one the source shows."""
    uses = our_uses()
    read = {method.split(".")[0] for by in self_attributes(OURS).values() for method in by}
    assert read == {cls.__name__ for cls in OURS} and len(OURS) > 1, "the trainer's mixins are parsed too"
    ours = our_definitions() - set(BORROWED)
    assert sorted(set(uses) - ours - set(BORROWED)) == [], "TRL attributes used without a row in BORROWED"
    assert sorted(set(BORROWED) - set(uses)) == [], "rows of BORROWED the trainer no longer uses"
    for name, borrowed in BORROWED.items():
        assert uses[name] == set(borrowed.uses.split(", ")), f"{name}: used as {sorted(uses[name])}"


def test_our_own_attributes_do_not_shadow_trl_ones(trainers):
    """A name our class assigns or defines that TRL's trainer also has would silently replace TRL's: it must be a
    declared set (BORROWED) or override (SEAMS). TRL's names: its instance's, its class's, and every ``self.<name>``
    its source assigns (attributes set later than __init__)."""
    trl_assigned = {
        name for name, by in self_attributes(CALLER_CLASSES).items() if any("set" in h for h in by.values())
    }
    trl_names = set(vars(trainers.plain)) | set(dir(GRPOTrainer)) | trl_assigned
    mine = our_definitions() - set(BORROWED) - set(SEAMS) - {"__init__"}
    assert sorted(mine & trl_names) == []


@pytest.mark.parametrize("name", sorted(BORROWED))
def test_trl_provides_each_borrowed_attribute_of_its_kind(trainers, name):
    """TRL's own trainer has it (a value: set by its __init__; a method: on its class) of the declared kind, and so
    does ours, whatever it set."""
    kind = BORROWED[name].kind
    value = getattr(trainers.plain, name)
    if inspect.ismethod(value):
        assert name in dir(GRPOTrainer) and not any(name in vars(cls) for cls in OURS), f"{name}: not TRL's method"
    else:
        assert name in vars(trainers.plain), f"{name}: TRL's __init__ no longer sets it"
    assert kind.accepts(value), f"{name}: TRL's is {value!r}, expected {kind.text}"
    assert kind.accepts(getattr(trainers.ours, name)), f"{name}: ours is {getattr(trainers.ours, name)!r}"


@pytest.mark.parametrize("name", sorted(n for n, b in BORROWED.items() if "set" in b.uses))
def test_what_we_set_reaches_the_trl_methods_declared(name):
    """The TRL methods reading an attribute we set are the ones reviewed: a new reader may misread our value."""
    readers = {
        m for m, how in self_attributes(CALLER_CLASSES)[name].items() if "read" in how and not m.endswith(".__init__")
    }
    assert readers == BORROWED[name].readers


def test_use_vllm_reaches_only_what_trl_sets_without_vllm(trainers):
    """Ours sets use_vllm after TRL built no vLLM engine: the reached readers must read only the importance-sampling
    settings, which TRL sets whatever the config's use_vllm."""
    assert USE_VLLM_REACHED <= BORROWED["use_vllm"].readers
    read = {
        name
        for name, by in self_attributes(CALLER_CLASSES).items()
        if "vllm" in name and name != "use_vllm" and any("read" in by[m] for m in USE_VLLM_REACHED if m in by)
    }
    assert read == set(USE_VLLM_NEEDS)
    assert trainers.plain.args.use_vllm is False
    for name, kind in USE_VLLM_NEEDS.items():
        assert name in vars(trainers.plain) and kind.accepts(getattr(trainers.plain, name)), name


@pytest.mark.parametrize("name", sorted(n for n, b in BORROWED.items() if b.kind.text.startswith("method(")))
def test_our_calls_of_trl_methods_bind(trainers, name):
    signature = inspect.signature(getattr(trainers.plain, name))
    for site in call_sites(name, OURS):
        try:
            signature.bind(*range(site.positional), **dict.fromkeys(site.keywords))
        except TypeError as error:
            pytest.fail(f"{site.caller} calls {name}: {error}")


@pytest.mark.parametrize("obj", TRL_OBJECTS)
def test_fields_we_read_from_trl_objects_exist(trainers, obj):
    fields = fields_read_from(obj)
    assert fields, f"no field of self.{obj} found: the scan is broken"
    missing = sorted(f for f in fields if not hasattr(getattr(trainers.plain, obj), f))
    assert missing == [], f"{obj}: {missing}"


def test_trl_hands_reward_functions_the_control_arguments_r_total_sets_aside():
    """R_total (``reward_bridge``) treats every keyword argument but TRL's control arguments as a row column, and
    reads the step from ``trainer_state`` and logs through ``log_metric``."""
    method = next(m for m in class_methods(GRPOTrainer) if m.name == "_calculate_rewards")
    assigned, passed = {}, set()
    for node in ast.walk(method):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and getattr(target.value, "id", None) == "reward_kwargs":
                    assigned[target.slice.value] = ast.unparse(node.value)
        if isinstance(node, ast.Call) and any(
            k.arg is None and getattr(k.value, "id", None) == "reward_kwargs" for k in node.keywords
        ):
            passed |= {k.arg for k in node.keywords if k.arg is not None}
    assert (set(assigned) | passed) - {"completions"} == set(TRL_CONTROL_KWARGS)
    assert assigned["trainer_state"] == "self.state" and assigned["log_metric"] == "self._log_metric"


def test_the_tracker_writers_the_run_record_reaches_are_still_there(trainers):
    """RunRecordToTrackers looks through ``callback_handler.callbacks`` for the writers of transformers' TensorBoard
    and W&B callbacks (``tb_writer``, ``_wandb``), each set by the callback's __init__."""
    assert isinstance(trainers.plain.callback_handler.callbacks, list)
    for cls, name in ((TensorBoardCallback, "tb_writer"), (WandbCallback, "_wandb")):
        init = next(m for m in class_methods(cls) if m.name == "__init__")
        assert name in {
            n.attr for n in ast.walk(init) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
        }
