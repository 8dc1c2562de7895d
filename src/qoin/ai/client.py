"""The AI client's pieces (``qoin ai``, docs/ai.md): options checked before any money moves, the
compute job that trains, fine-tunes or runs a model (its command line for the job program
``qoin_ai_job`` in the provider's runtime), and the runtime most candidate providers offer (from
their ``GET /compute/v1/info``).

The flow that drives the markets is in :mod:`qoin.ai.jobs`, the job's live loss and its results
in :mod:`qoin.ai.output`, the catalog in :mod:`qoin.ai.catalog`. Nothing here imports PyTorch (nor
numpy).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import httpx

from qoin.compute.client import (
    BadOptions,
    ComputeClientError,
    InputRef,
    JobOptions,
    NoMatch,
    Refusal,
    endpoint_url,
)
from qoin.compute.jobspec import Determinism, Executor, OutputLimits, Verification
from qoin.compute.market import AskInfo
from qoin.crypto.address import Address

ARCHS: Final = ("mlp", "cnn", "charlm")
"""The model architectures the job program trains."""
TASK_OF: Final = {"mlp": "classification", "cnn": "classification", "charlm": "text"}
MAX_EPOCHS: Final = 10_000
MAX_LR: Final = 10.0
MAX_BATCH: Final = 65_536
MAX_SEED: Final = 2**32 - 1
MAX_TOKENS: Final = 100_000
DEFAULT_EPOCHS: Final = 10
DEFAULT_LR: Final = 0.01
DEFAULT_BATCH: Final = 64
DEFAULT_TOKENS: Final = 200
DEFAULT_MEMORY: Final = "1GiB"
DEFAULT_TIMEOUT: Final = "30m"
OUTPUT_LIMITS: Final = OutputLimits(max_bytes=1 << 30, max_files=16, max_log_bytes=16 << 20)
"""What an AI job may leave: a model, its metrics or predictions, and its stdout/stderr."""
ANSWER_OUTPUTS: Final = OutputLimits(max_bytes=64 << 20, max_files=3, max_log_bytes=16 << 20)
"""What an inference a contract requests may leave: its predictions.json (a reveal that carries
an answer lists at most 3 output files, docs/spec/compute.md §3.12)."""

RUNTIME_PATH: Final = "/runtime/bin/python"
DATA_PATH: Final = "/inputs/data"
BASE_PATH: Final = "/inputs/base"
MODEL_PATH: Final = "/inputs/model"
INPUT_PATH: Final = "/inputs/input"
OUT_PATH: Final = "/outputs"
MODEL_FILE: Final = "model.qm"
METRICS_FILE: Final = "metrics.json"
PREDICTIONS_FILE: Final = "predictions.json"

MAX_MODEL: Final = 1 << 30
"""The largest model file read (bytes)."""
MAX_DATASET: Final = 1 << 30
"""The largest dataset fetched to check it (bytes)."""
MAX_INFO_ANSWER: Final = 64 * 1024
INFO_TIMEOUT_S: Final = 5.0
MAX_INFO_ASKS: Final = 64
"""Providers asked for their runtimes, at most."""

_CID: Final = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_RUNTIME: Final = re.compile(r"[a-z0-9][a-z0-9._-]*@[0-9a-f]{32}")


def parse_cid(text: str, option: str) -> str:
    """A content id as 64 lowercase hex digits; :class:`BadOptions` if ``text`` is not one."""
    found = _CID.fullmatch(text.strip())
    if found is None:
        raise BadOptions(f"{option} {text[:80]!r} is not a content id (64 hex digits)")
    return found[1].lower()


# -- options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """What ``qoin ai train`` and ``finetune`` ask for."""

    arch: str
    data: str
    """The dataset's CID (hex)."""
    base: str | None = None
    """The model fine-tuned (its CID), or None."""
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch: int = DEFAULT_BATCH
    seed: int = 0

    def check(self) -> None:
        """:class:`BadOptions` saying what is out of range."""
        if self.arch not in ARCHS:
            raise BadOptions(f"--model is one of {', '.join(ARCHS)}, not {self.arch[:40]!r}")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise BadOptions(f"--epochs is 1 to {MAX_EPOCHS}, not {self.epochs}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise BadOptions(f"--lr is over 0 and at most {MAX_LR:g}, not {self.lr!r}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise BadOptions(f"--batch is 1 to {MAX_BATCH}, not {self.batch}")
        check_seed(self.seed)


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise BadOptions(f"--seed is 0 to {MAX_SEED}, not {seed}")


def check_tokens(tokens: int) -> None:
    if not 1 <= tokens <= MAX_TOKENS:
        raise BadOptions(f"--tokens is 1 to {MAX_TOKENS}, not {tokens}")


@dataclass(frozen=True)
class Resources:
    """The job's resources and how it is checked."""

    cpus: int = 1
    memory: int = 2 << 30
    timeout: int = 1800
    gpu: bool = False
    verification: Verification = Verification.NONE

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"


def check_arch_fits(arch: str, meta: Mapping[str, Any]) -> None:
    """:class:`BadOptions` unless a model of ``arch`` can learn the dataset ``meta`` describes."""
    if meta.get("format") != "qoin-dataset":
        raise BadOptions(f"--data is not a dataset (its format is {meta.get('format')!r})")
    task = meta.get("task")
    if TASK_OF[arch] != task:
        want = "a text dataset" if arch == "charlm" else "a classification dataset"
        raise BadOptions(f"--model {arch} learns {want}; this dataset's task is {task!r}")
    shape = meta.get("shape")
    if arch == "cnn" and not (isinstance(shape, list) and len(shape) == 3):
        raise BadOptions(
            f"--model cnn learns images (samples shaped [channels, height, width]); this "
            f"dataset's samples are shaped {shape!r}: use --model mlp"
        )


def check_base_fits(base: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The base model's arch, once it is checked against the dataset it is fine-tuned on."""
    if base.get("format") != "qoin-model":
        raise BadOptions(f"--base is not a model (its format is {base.get('format')!r})")
    arch = base.get("arch")
    if arch not in ARCHS:
        raise BadOptions(f"--base is a model of an unknown arch {str(arch)[:40]!r}")
    check_arch_fits(str(arch), data)
    if base.get("task") == "classification":
        if base.get("shape") != data.get("shape"):
            raise BadOptions(
                f"--base takes samples shaped {base.get('shape')!r}, the dataset's are "
                f"{data.get('shape')!r}"
            )
        if base.get("classes") != data.get("classes"):
            raise BadOptions("--base was trained on other classes than this dataset's")
    return str(arch)


# -- the job ---------------------------------------------------------------------------------------


def train_command(options: TrainOptions, resources: Resources) -> tuple[str, ...]:
    """The job's command: the job program's ``train`` in the runtime."""
    command = [
        RUNTIME_PATH, "-m", "qoin_ai_job", "train", "--arch", options.arch, "--data", DATA_PATH,
    ]  # fmt: skip
    if options.base is not None:
        command += ["--base", BASE_PATH]
    command += [
        "--epochs", str(options.epochs), "--lr", repr(float(options.lr)),
        "--batch", str(options.batch), "--seed", str(options.seed),
        "--threads", str(resources.cpus), "--device", resources.device, "--out", OUT_PATH,
    ]  # fmt: skip
    return tuple(command)


def infer_command(
    tokens: int | None, seed: int, resources: Resources, answer: bool = False
) -> tuple[str, ...]:
    """The job's command: the job program's ``infer`` in the runtime; with ``answer``, its stdout
    is the answer only (``--answer label``: the labels, or the text, in at most 256 bytes), what
    a contract's callback carries."""
    command = [
        RUNTIME_PATH, "-m", "qoin_ai_job", "infer", "--model", MODEL_PATH, "--input", INPUT_PATH,
    ]  # fmt: skip
    if tokens is not None:
        command += ["--tokens", str(tokens)]
    if answer:
        command += ["--answer", "label"]
    command += [
        "--seed", str(seed), "--threads", str(resources.cpus), "--device", resources.device,
        "--out", OUT_PATH,
    ]  # fmt: skip
    return tuple(command)


def job_options(
    command: Sequence[str],
    inputs: Mapping[str, str],
    resources: Resources,
    runtime: str,
    gpu_model: str = "",
    outputs: OutputLimits = OUTPUT_LIMITS,
) -> JobOptions:
    """The compute job (:class:`BadOptions` for a spec that breaks a rule): sandbox, no
    network, the runtime ``runtime``, ``inputs`` (path -> CID hex); exact determinism, or
    same-hardware on one GPU of ``gpu_model``; ``outputs`` bounds what it leaves."""
    options = JobOptions(
        command=tuple(command),
        executor=Executor.SANDBOX,
        inputs=tuple(InputRef(path, cid=bytes.fromhex(cid)) for path, cid in inputs.items()),
        cpus=resources.cpus,
        memory=resources.memory,
        gpus=1 if resources.gpu else 0,
        gpu_model=gpu_model if resources.gpu else "",
        timeout=resources.timeout,
        network=False,
        determinism=Determinism.SAME_HARDWARE if resources.gpu else Determinism.EXACT,
        verification=resources.verification,
        outputs=outputs,
        runtime=runtime,
    )
    options.spec()
    return options


# -- the runtime the providers offer ---------------------------------------------------------------


def candidate_asks(
    asks: Iterable[AskInfo], providers: Sequence[Address], gpu: bool
) -> list[AskInfo]:
    """The active asks that could run an AI job: sandbox offered, a GPU when ``gpu``, one of
    ``providers`` when it names any."""
    found = []
    for ask in asks:
        if not ask.active or not ask.executors & Executor.SANDBOX.bit:
            continue
        if gpu and ask.gpus < 1:
            continue
        if providers and ask.provider not in providers:
            continue
        found.append(ask)
    return found[:MAX_INFO_ASKS]


def parse_runtimes(answer: Any) -> tuple[str, ...]:
    """The runtime refs of a provider's ``/info`` answer (those that are well formed)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("runtimes"), list):
        return ()
    refs = []
    for item in answer["runtimes"][:64]:
        ref = item.get("ref") if isinstance(item, dict) else None
        if isinstance(ref, str) and len(ref) <= 128 and _RUNTIME.fullmatch(ref):
            refs.append(ref)
    return tuple(refs)


def _info(http: httpx.Client, ask: AskInfo) -> tuple[str, ...] | str:
    """The runtimes ``ask``'s provider offers, or why it could not be asked."""
    try:
        url = endpoint_url(ask.endpoint) + "/info"
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                return f"its /info answered HTTP {response.status_code}"
            raw = bytearray()
            for piece in response.iter_bytes():
                raw += piece
                if len(raw) > MAX_INFO_ANSWER:
                    return "its /info answer is too long"
        return parse_runtimes(json.loads(raw))
    except (httpx.HTTPError, ComputeClientError) as exc:
        return f"its /info could not be read ({exc})"
    except ValueError:
        return "its /info answer is not JSON"


def offered_runtimes(asks: Sequence[AskInfo]) -> dict[Address, tuple[str, ...] | str]:
    """Each provider's runtime refs (or why it could not be asked), asked side by side."""
    if not asks:
        return {}
    timeout = httpx.Timeout(INFO_TIMEOUT_S, connect=INFO_TIMEOUT_S)
    with (
        httpx.Client(timeout=timeout, follow_redirects=False) as http,
        ThreadPoolExecutor(max_workers=min(16, len(asks))) as pool,
    ):
        answers = list(pool.map(lambda ask: _info(http, ask), asks))
    return {ask.provider: answer for ask, answer in zip(asks, answers, strict=True)}


def choose_runtime(
    offers: Mapping[Address, tuple[str, ...] | str],
    endpoints: Mapping[Address, str],
    replicas: int,
    wanted: str = "",
) -> str:
    """``wanted`` if given, else the runtime ref the most providers offer (ties: the smallest
    ref). :class:`NoMatch` naming every provider and why when fewer than ``replicas`` offer it."""
    counts: Counter[str] = Counter()
    for answer in offers.values():
        if not isinstance(answer, str):
            counts.update(set(answer))
    if wanted:
        chosen = wanted
    elif counts:
        chosen = min(counts, key=lambda ref: (-counts[ref], ref))
    else:
        chosen = ""
    if chosen and counts[chosen] >= replicas:
        return chosen
    refusals = []
    for provider, answer in offers.items():
        if isinstance(answer, str):
            reason = answer
        elif not answer:
            reason = "offers no AI runtime (qoin ai runtime install; qoin compute provider)"
        elif chosen not in answer:
            reason = f"offers {', '.join(answer)}, not {chosen}"
        else:
            continue
        refusals.append(Refusal(provider, endpoints.get(provider, ""), reason))
    what = f"runtime {chosen}" if chosen else "an AI runtime"
    need = f"{replicas} providers" if replicas > 1 else "a provider"
    raise NoMatch(
        f"no AI job can run: {need} offering {what} needed, {counts[chosen] if chosen else 0} "
        f"found among {len(offers)} candidate(s)",
        refusals,
    )


def choose_gpu_model(asks: Sequence[AskInfo], runtime: str, offers: Mapping[Address, Any]) -> str:
    """The GPU model most of the GPU providers offering ``runtime`` have (``same-hardware``
    results agree only on the same model)."""
    models: Counter[str] = Counter()
    for ask in asks:
        answer = offers.get(ask.provider)
        if ask.gpus > 0 and not isinstance(answer, str) and answer and runtime in answer:
            models[ask.gpu_model] += 1
    if not models:
        return ""
    return min(models, key=lambda model: (-models[model], model))
