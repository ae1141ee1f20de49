"""The protocol's bodies as pydantic models: requests (bounded by any server's absolute maxima;
`publish_limits` writes a server's own into its schema), answers, and the error answers each
route documents."""

# No `from __future__ import annotations`: pydantic and FastAPI read annotations as objects.
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from torch_student_env.config import MAX_ENV_OFFSET, MAX_SEED
from torch_student_env.server.config import ABSOLUTE_MAX, CLIENT_STEP_SIZE, CLIENT_STEPS_PER_EPISODE, Limits


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 41.0: take an integral float as the int it is.

    Everything else goes on to the strict int check, so `"41"`, `true` and 41.5 stay refused.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Every integer is bounded before any state changes: seeds and indices become int64 tensors.
def _int(low: int, high: int) -> Any:
    """An int field bounded to [low, high] that also takes an integral float."""
    # The published bounds are set exactly: derived through the validator they would be floats,
    # and 2**63 - 1 as a float is 2**63.
    exact = WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral), exact]


Action = _int(0, 2)
Seed = _int(0, MAX_SEED)
EnvIndex = _int(0, MAX_ENV_OFFSET)
Counter = _int(1, 2**62)
# Ids are the server's own hex strings; a bounded length keeps a request's size predictable.
EpisodeId = Annotated[str, Field(max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# Request bodies are bounded by the absolute maxima of any server (`config.ABSOLUTE_MAX`); a
# server's own, smaller `Limits` are enforced by `ServerState` and published by `publish_limits`.
StepSize = _int(1, ABSOLUTE_MAX["max_step_size"])
EpisodeLimit = _int(1, ABSOLUTE_MAX["max_steps_per_episode"])
_BATCH = {"maxItems": ABSOLUTE_MAX["max_envs_per_request"]}  # episodes in one request


class SingleReset(_Body):
    episode_id: EpisodeId
    seed: Seed | None = None


class EnvConfigBody(BaseModel):
    """The seed client's `env_config`; unknown fields are ignored as the challenge server does.
    A field left out takes the client's default (1,000 flights, 10 a step), within the server's
    limits."""

    model_config = ConfigDict(strict=True, extra="ignore")
    env_type: str = "DegradationEnv"
    max_steps_per_episode: EpisodeLimit = CLIENT_STEPS_PER_EPISODE
    auto_reset: bool = True
    step_size: StepSize = CLIENT_STEP_SIZE


class VectorizedCreate(_Body):
    env_config: EnvConfigBody = EnvConfigBody()
    num_envs: _int(1, ABSOLUTE_MAX["max_envs_per_request"])


class VectorizedReset(_Body):
    episode_ids: list[EpisodeId] = Field(min_length=1, json_schema_extra=_BATCH | {"uniqueItems": True})
    seeds: list[Seed | None] | None = None
    env_indices: list[EnvIndex] | None = None
    reset_counters: list[Counter] | None = None


class EpisodeAction(_Body):
    episode_id: EpisodeId
    action: Action
    step_size: StepSize = CLIENT_STEP_SIZE
    return_all_states: bool = True
    step_counter: Counter | None = None
    reset_if_done: bool = False  # start the next episode in this request if this step ends one


class VectorizedStep(_Body):
    episode_actions: list[EpisodeAction] = Field(min_length=1, json_schema_extra=_BATCH)


class SingleStep(_Body):
    episode_id: EpisodeId
    action: Action
    step_size: StepSize = CLIENT_STEP_SIZE
    return_all_states: bool = True


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    EnvConfigBody, VectorizedCreate, VectorizedReset, EpisodeAction, VectorizedStep, SingleReset, SingleStep,
)  # fmt: skip


def given(body: BaseModel, field: str) -> Any:
    """A body's field as the client sent it, None where it was left out (the server's default
    then applies, within its limits)."""
    return getattr(body, field) if field in body.model_fields_set else None


def publish_limits(schema: dict[str, Any], limits: Limits) -> None:
    """Write a server's own `Limits` into its OpenAPI schema (bounds and defaults), so that what
    it publishes is what it accepts."""
    components = schema["components"]["schemas"]
    per_request, step_size = limits.max_envs_per_request, limits.max_step_size
    bounds = {
        ("VectorizedCreate", "num_envs"): {"maximum": per_request},
        ("VectorizedStep", "episode_actions"): {"maxItems": per_request},
        ("VectorizedReset", "episode_ids"): {"maxItems": per_request},
        ("EnvConfigBody", "max_steps_per_episode"): {
            "maximum": limits.max_steps_per_episode,
            "default": limits.default_steps_per_episode,
        },
        ("EnvConfigBody", "step_size"): {"maximum": step_size, "default": limits.default_step_size},
        ("EpisodeAction", "step_size"): {"maximum": step_size, "default": limits.default_step_size},
        ("SingleStep", "step_size"): {"maximum": step_size, "default": limits.default_step_size},
    }
    for (model, field), values in bounds.items():
        components[model]["properties"][field].update(values)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", ()):
                if parameter["name"] == "limit":
                    parameter["schema"]["maximum"] = limits.scored_episodes_per_token


class Rejected(BaseModel):
    """Every error answer: `detail` says what was wrong, naming the value."""

    detail: str


class InvalidField(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """422: a list naming each field that failed validation, or a string for rules that span
    fields (list lengths that differ, an episode listed twice)."""

    detail: str | list[InvalidField]


_WHY = {
    400: (Rejected, "a body that is not JSON"),
    401: (Rejected, "missing or unknown User-Token"),
    404: (Rejected, "session, episode or user not found (or another token's)"),
    409: (
        Rejected,
        "conflicts with the current state or across fields: counter out of sequence, episode never "
        "reset, session or token at its engine limit, an episode listed twice in one step, lists of a "
        "reset of other lengths than its episode_ids",
    ),  # fmt: skip
    413: (Rejected, "request body over the size limit"),
    422: (Invalid, "invalid request"),
    500: (
        Rejected,
        "single-engine step only: the engine failed on the step's first flight (the episode is over; "
        "the challenge's server answers this case with an error, which its client reports as reward 0, "
        "terminated)",
    ),  # fmt: skip
    503: (
        Rejected,
        "the step ended episodes that the score database could not save (disk full or failing): "
        "they are not acknowledged, and the detail names the cause",
    ),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: the error answers it can give, each a JSON body."""
    return {
        code: {
            "description": why,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
        for code, (model, why) in ((c, _WHY[c]) for c in codes)
    }


# -- answers --------------------------------------------------------------------------------------
Row = list[float]  # one flight: the 9 features
Rows = list[Row]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Version(_Answer):
    latest_version: str
    server: str
    features: list[str]


class SessionCreated(_Answer):
    session_id: str


class SessionDeleted(_Answer):
    session_id: str
    deleted: bool


class GroupCreated(_Answer):
    episode_ids: list[str]
    vectorized_group_id: str


class Info(BaseModel):
    """An episode's info: the flight counter, its id and reward so far; a step adds `failed`,
    `repairs` and, when it ended, `reason`; a server that exposes health adds `health`,
    `degradation`, `wear_rate`, `repairs` and `health_rows`."""

    model_config = ConfigDict(extra="allow")
    step: int
    episode_id: str
    total_reward: float


class EpisodeCreated(_Answer):
    episode_id: str
    initial_observation: Row
    info: Info


class Restarted(_Answer):
    """The first row of an episode, and its info."""

    observation: Row
    info: Info


class VectorizedResetAnswer(_Answer):
    observations: Rows
    infos: list[Info]


class VectorizedStepAnswer(_Answer):
    """Per episode, in request order: its rows (`return_all_states`) or newest row, reward, flags,
    info, the step counter sent, and the next episode's start when `reset_if_done` restarted it."""

    observations: list[Rows | Row]
    rewards: list[float]
    terminateds: list[bool]
    truncateds: list[bool]
    infos: list[Info]
    step_counters: list[int | None]
    resets: list[Restarted | None]


class StepAnswer(_Answer):
    observation: Rows | Row
    reward: float
    terminated: bool
    truncated: bool
    step: int
    info: Info


class LatestState(_Answer):
    episode_id: str
    step: int
    terminated: bool
    truncated: bool
    total_reward: float
    observation: Row


class EpisodeStatus(LatestState):
    vectorized_group_id: str
    max_steps_per_episode: int
    step_counter: int
    reset_counter: int


class Score(_Answer):
    """The challenge's leaderboard metrics (empty without a finished episode)."""

    metrics: dict[str, Any]
    limit: int
