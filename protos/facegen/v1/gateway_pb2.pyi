import datetime

from facegen.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_COMPLETED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_GENERATING: _ClassVar[Stage]
    STAGE_STORING: _ClassVar[Stage]
    STAGE_SWAPPING: _ClassVar[Stage]
    STAGE_FINALIZING: _ClassVar[Stage]
    STAGE_TERMINAL: _ClassVar[Stage]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_COMPLETED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_GENERATING: Stage
STAGE_STORING: Stage
STAGE_SWAPPING: Stage
STAGE_FINALIZING: Stage
STAGE_TERMINAL: Stage

class JobRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "seed", "num_images", "lora", "reference_image", "reference_key", "target_image", "swap_options", "idempotency_key", "preview_every")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SWAP_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    lora: _common_pb2.LoraSpec
    reference_image: bytes
    reference_key: str
    target_image: bytes
    swap_options: _common_pb2.SwapOptions
    idempotency_key: str
    preview_every: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., num_images: _Optional[int] = ..., lora: _Optional[_Union[_common_pb2.LoraSpec, _Mapping]] = ..., reference_image: _Optional[bytes] = ..., reference_key: _Optional[str] = ..., target_image: _Optional[bytes] = ..., swap_options: _Optional[_Union[_common_pb2.SwapOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., preview_every: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("job_id", "created")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    created: bool
    def __init__(self, job_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    def __init__(self, state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "time", "stage", "percent", "message", "image_index", "denoise", "remote", "image", "result", "queue_position", "resumed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DENOISE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    stage: Stage
    percent: float
    message: str
    image_index: int
    denoise: DenoiseProgress
    remote: _common_pb2.RemoteJobStatus
    image: ImageResult
    result: JobResult
    queue_position: int
    resumed: bool
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stage: _Optional[_Union[Stage, str]] = ..., percent: _Optional[float] = ..., message: _Optional[str] = ..., image_index: _Optional[int] = ..., denoise: _Optional[_Union[DenoiseProgress, _Mapping]] = ..., remote: _Optional[_Union[_common_pb2.RemoteJobStatus, _Mapping]] = ..., image: _Optional[_Union[ImageResult, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., queue_position: _Optional[int] = ..., resumed: _Optional[bool] = ...) -> None: ...

class DenoiseProgress(_message.Message):
    __slots__ = ("step", "total_steps", "preview_png")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_PNG_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    preview_png: bytes
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., preview_png: _Optional[bytes] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("index", "url", "storage_key", "content_type", "width", "height", "seed", "face_swap_method", "fallback_reason", "fallback_message", "identity_distance")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FACE_SWAP_METHOD_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    index: int
    url: str
    storage_key: str
    content_type: str
    width: int
    height: int
    seed: int
    face_swap_method: _common_pb2.FaceSwapMethod
    fallback_reason: _common_pb2.FallbackReason
    fallback_message: str
    identity_distance: float
    def __init__(self, index: _Optional[int] = ..., url: _Optional[str] = ..., storage_key: _Optional[str] = ..., content_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., seed: _Optional[int] = ..., face_swap_method: _Optional[_Union[_common_pb2.FaceSwapMethod, str]] = ..., fallback_reason: _Optional[_Union[_common_pb2.FallbackReason, str]] = ..., fallback_message: _Optional[str] = ..., identity_distance: _Optional[float] = ...) -> None: ...

class ImageFailure(_message.Message):
    __slots__ = ("index", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: str
    message: str
    def __init__(self, index: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "duration_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    duration_ms: int
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("state", "code", "message", "images", "failures", "timings", "reference_key", "trace_id")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    code: str
    message: str
    images: _containers.RepeatedCompositeFieldContainer[ImageResult]
    failures: _containers.RepeatedCompositeFieldContainer[ImageFailure]
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    reference_key: str
    trace_id: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ..., failures: _Optional[_Iterable[_Union[ImageFailure, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., reference_key: _Optional[str] = ..., trace_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "stage", "percent", "created_at", "last_seq", "result", "trace_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    stage: Stage
    percent: float
    created_at: _timestamp_pb2.Timestamp
    last_seq: int
    result: JobResult
    trace_id: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., percent: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...
