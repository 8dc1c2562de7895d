"""The compute client (docs/spec/compute.md §6): run a job on the market's providers, follow it,
fetch its outputs, dispute it, check it locally.

``run`` (:func:`submit` then :func:`follow`):

1. **match**: reads the book (asks and mediators) and ranks the providers that can take the job
   (:func:`rank`: price, then free capacity, then reputation), saying why each other one is
   refused (price over the limit, not enough free CPUs/memory/GPUs, executor not offered, k too
   low, not enough free collateral, no mediator in common); for ``spot`` and ``replicated`` it
   picks a mediator that enough of them accept (:func:`plans`). It places the bid, offers the job
   to the chosen providers (``POST /offer`` with the spec and the job key sealed to each one's
   ML-KEM key), checks each signed acceptance, replaces a provider that refuses or does not answer
   by the next one, forms the deal and hands the spec and the job key to the mediator
   (``POST /mediate``). A deal that cannot form has its bid cancelled (the deposit back).
2. **stage, run**: the provider's job state (``GET /jobs/{deal}``) and its live stdout/stderr
   (``WS /jobs/{deal}/logs``, reconnecting with ``?from=`` the last byte received).
3. **commit, verify, settle**: the deal's events, followed by one log subscription (topic 2 = the
   deal), caught up with ``qoin_getLogs`` after every reconnection.
4. **outputs**: once the result is final (the check phase, or the settlement) the outputs archive is
   fetched straight from its provider (``GET /jobs/{deal}/outputs``), else from the storage market
   by the CID the provider names (decrypted with the key only the client and the mediator can
   derive, :func:`qoin.compute.keys.output_master`), and unpacked against the root the provider
   revealed on chain (:func:`qoin.compute.outputs.unpack`: every file verified; bytes that do not
   verify count as outputs that cannot be had). While it waits, it says for what. The job's exit
   status comes from that verified manifest.

The job key (drawn per job; it seals the inputs' file keys and the outputs) is kept in a job record
under ``$QOIN_HOME/compute/jobs`` sealed under a key derived from the client's keystore, so that
``get`` works later from the same keystore.

``status`` (chain and provider), ``logs``, ``get``, ``dispute``, ``asks`` and ``local`` (the spec run
twice with the local executor; are the result roots equal?) are the other commands.

The package, by concern (every public name is re-exported here): :mod:`.base` (exit statuses,
bounds, errors, JSON requests, the watcher), :mod:`.options` (a job's options into its spec),
:mod:`.ranking` (the book, ranked; plans; ``asks``), :mod:`.api` (a provider's API: offers, the
mediator's copy of the job, the per-job endpoints, the live log), :mod:`.submit` (``run``'s
match), :mod:`.story` (a deal's events, its story and its cost), :mod:`.records` (job records),
:mod:`.results` (outputs, fetched and verified), :mod:`.follow` (``run``'s follow),
:mod:`.status` (``status``, ``logs``, ``get``, ``dispute``) and :mod:`.local` (``local``).
"""

from __future__ import annotations

from qoin.compute.client.api import (
    Acceptance,
    JobState,
    LogEnd,
    LogStream,
    ProviderApi,
    request_acceptance,
    send_to_mediator,
)
from qoin.compute.client.base import (
    CID_POLL_S,
    DEFAULT_DEADLINE_BLOCKS,
    EVENT_WAIT_S,
    EXIT_LIMIT,
    EXIT_NO_MATCH,
    EXIT_NO_OUTPUTS,
    EXIT_NON_DETERMINISTIC,
    EXIT_NOT_RUN,
    EXIT_TIMEOUT,
    EXIT_UNDELIVERED,
    GET_WAIT_S,
    HEAD_CHECK_S,
    HTTP_ANSWER_S,
    HTTP_CONNECT_S,
    MAX_JSON_ANSWER,
    MAX_LOG_FRAME,
    MAX_LOG_QUERIES,
    MAX_OUTPUT_ARCHIVE,
    MAX_RESULT_ANSWER,
    NO_WATCHER,
    OFFER_ATTEMPTS,
    OFFER_BACKOFF_S,
    OUTPUTS_DIR,
    OUTPUTS_WAIT_S,
    PHASES,
    POLL_S,
    REASON_EXIT,
    RECEIPT_TIMEOUT_S,
    RECONNECT_S,
    RETRY_STATUSES,
    STALL_S,
    STDOUT_FILE,
    BadOptions,
    ComputeClientError,
    NotFound,
    NoWatcher,
    Watcher,
    endpoint_url,
    head,
    parse_address,
    parse_deal,
)
from qoin.compute.client.follow import (
    RunOutcome,
    follow,
)
from qoin.compute.client.local import (
    LocalResult,
    LocalRun,
    differences,
    run_local,
    stage_local_inputs,
)
from qoin.compute.client.options import (
    InputRef,
    JobOptions,
    MarketOptions,
    check_options,
    parse_env,
    parse_input,
)
from qoin.compute.client.ranking import (
    Candidate,
    MatchPlan,
    NoMatch,
    Ranking,
    Refusal,
    ask_json,
    book,
    executor_names,
    mediator_json,
    no_match_message,
    plans,
    rank,
    refusal_reason,
    usable_mediators,
)
from qoin.compute.client.records import (
    INFO_RECORD,
    JOBS_DIR,
    MAX_RECORD,
    JobRecord,
    jobs_dir,
    load_record,
)
from qoin.compute.client.results import (
    SavedOutputs,
    check_out_dir,
    fetch_outputs,
)
from qoin.compute.client.status import (
    DealStatus,
    Disputed,
    ReplicaStatus,
    bid_json,
    deal_status,
    dispute,
    get,
    replica_api,
    stream_logs,
)
from qoin.compute.client.story import (
    FINE_REASONS,
    OUTCOMES,
    VERDICTS,
    Cost,
    DealEvent,
    DealFollower,
    DealStory,
    cost_of,
    deal_logs,
    describe_event,
    parse_log,
    story_json,
)
from qoin.compute.client.submit import (
    Prepared,
    Submitted,
    input_keys,
    prepare,
    submit,
)

__all__ = [
    "CID_POLL_S",
    "DEFAULT_DEADLINE_BLOCKS",
    "EVENT_WAIT_S",
    "EXIT_LIMIT",
    "EXIT_NON_DETERMINISTIC",
    "EXIT_NOT_RUN",
    "EXIT_NO_MATCH",
    "EXIT_NO_OUTPUTS",
    "EXIT_TIMEOUT",
    "EXIT_UNDELIVERED",
    "FINE_REASONS",
    "GET_WAIT_S",
    "HEAD_CHECK_S",
    "HTTP_ANSWER_S",
    "HTTP_CONNECT_S",
    "INFO_RECORD",
    "JOBS_DIR",
    "MAX_JSON_ANSWER",
    "MAX_LOG_FRAME",
    "MAX_LOG_QUERIES",
    "MAX_OUTPUT_ARCHIVE",
    "MAX_RECORD",
    "MAX_RESULT_ANSWER",
    "NO_WATCHER",
    "OFFER_ATTEMPTS",
    "OFFER_BACKOFF_S",
    "OUTCOMES",
    "OUTPUTS_DIR",
    "OUTPUTS_WAIT_S",
    "PHASES",
    "POLL_S",
    "REASON_EXIT",
    "RECEIPT_TIMEOUT_S",
    "RECONNECT_S",
    "RETRY_STATUSES",
    "STALL_S",
    "STDOUT_FILE",
    "VERDICTS",
    "Acceptance",
    "BadOptions",
    "Candidate",
    "ComputeClientError",
    "Cost",
    "DealEvent",
    "DealFollower",
    "DealStatus",
    "DealStory",
    "Disputed",
    "InputRef",
    "JobOptions",
    "JobRecord",
    "JobState",
    "LocalResult",
    "LocalRun",
    "LogEnd",
    "LogStream",
    "MarketOptions",
    "MatchPlan",
    "NoMatch",
    "NoWatcher",
    "NotFound",
    "Prepared",
    "ProviderApi",
    "Ranking",
    "Refusal",
    "ReplicaStatus",
    "RunOutcome",
    "SavedOutputs",
    "Submitted",
    "Watcher",
    "ask_json",
    "bid_json",
    "book",
    "check_options",
    "check_out_dir",
    "cost_of",
    "deal_logs",
    "deal_status",
    "describe_event",
    "differences",
    "dispute",
    "endpoint_url",
    "executor_names",
    "fetch_outputs",
    "follow",
    "get",
    "head",
    "input_keys",
    "jobs_dir",
    "load_record",
    "mediator_json",
    "no_match_message",
    "parse_address",
    "parse_deal",
    "parse_env",
    "parse_input",
    "parse_log",
    "plans",
    "prepare",
    "rank",
    "refusal_reason",
    "replica_api",
    "request_acceptance",
    "run_local",
    "send_to_mediator",
    "stage_local_inputs",
    "story_json",
    "stream_logs",
    "submit",
    "usable_mediators",
]
