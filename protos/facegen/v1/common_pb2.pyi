from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaceSwapMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACE_SWAP_METHOD_UNSPECIFIED: _ClassVar[FaceSwapMethod]
    FACE_SWAP_METHOD_NONE: _ClassVar[FaceSwapMethod]
    FACE_SWAP_METHOD_EXTERNAL_API: _ClassVar[FaceSwapMethod]
    FACE_SWAP_METHOD_LOCAL: _ClassVar[FaceSwapMethod]

class FallbackReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_REASON_UNSPECIFIED: _ClassVar[FallbackReason]
    FALLBACK_REASON_DISABLED: _ClassVar[FallbackReason]
    FALLBACK_REASON_ENDPOINT_UNAVAILABLE: _ClassVar[FallbackReason]
    FALLBACK_REASON_KEY_REJECTED: _ClassVar[FallbackReason]
    FALLBACK_REASON_RATE_LIMITED: _ClassVar[FallbackReason]
    FALLBACK_REASON_REMOTE_FAILED: _ClassVar[FallbackReason]
    FALLBACK_REASON_TIMED_OUT: _ClassVar[FallbackReason]
    FALLBACK_REASON_CANCELLED: _ClassVar[FallbackReason]
    FALLBACK_REASON_NO_FACE_FOUND: _ClassVar[FallbackReason]
    FALLBACK_REASON_UNDECODABLE_RESULT: _ClassVar[FallbackReason]
    FALLBACK_REASON_JOB_EXPIRED: _ClassVar[FallbackReason]
    FALLBACK_REASON_PROTOCOL_ERROR: _ClassVar[FallbackReason]
    FALLBACK_REASON_SWAP_UNCHANGED: _ClassVar[FallbackReason]
    FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE: _ClassVar[FallbackReason]
FACE_SWAP_METHOD_UNSPECIFIED: FaceSwapMethod
FACE_SWAP_METHOD_NONE: FaceSwapMethod
FACE_SWAP_METHOD_EXTERNAL_API: FaceSwapMethod
FACE_SWAP_METHOD_LOCAL: FaceSwapMethod
FALLBACK_REASON_UNSPECIFIED: FallbackReason
FALLBACK_REASON_DISABLED: FallbackReason
FALLBACK_REASON_ENDPOINT_UNAVAILABLE: FallbackReason
FALLBACK_REASON_KEY_REJECTED: FallbackReason
FALLBACK_REASON_RATE_LIMITED: FallbackReason
FALLBACK_REASON_REMOTE_FAILED: FallbackReason
FALLBACK_REASON_TIMED_OUT: FallbackReason
FALLBACK_REASON_CANCELLED: FallbackReason
FALLBACK_REASON_NO_FACE_FOUND: FallbackReason
FALLBACK_REASON_UNDECODABLE_RESULT: FallbackReason
FALLBACK_REASON_JOB_EXPIRED: FallbackReason
FALLBACK_REASON_PROTOCOL_ERROR: FallbackReason
FALLBACK_REASON_SWAP_UNCHANGED: FallbackReason
FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE: FallbackReason

class SwapOptions(_message.Message):
    __slots__ = ("mouth_mask", "use_face_enhancer", "many_faces")
    MOUTH_MASK_FIELD_NUMBER: _ClassVar[int]
    USE_FACE_ENHANCER_FIELD_NUMBER: _ClassVar[int]
    MANY_FACES_FIELD_NUMBER: _ClassVar[int]
    mouth_mask: bool
    use_face_enhancer: bool
    many_faces: bool
    def __init__(self, mouth_mask: _Optional[bool] = ..., use_face_enhancer: _Optional[bool] = ..., many_faces: _Optional[bool] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "loaded", "is_default", "default_width", "default_height", "min_size", "max_size", "default_steps", "max_steps", "default_guidance", "max_guidance", "loras", "size_multiple", "negative_prompt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    SIZE_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    loaded: bool
    is_default: bool
    default_width: int
    default_height: int
    min_size: int
    max_size: int
    default_steps: int
    max_steps: int
    default_guidance: float
    max_guidance: float
    loras: _containers.RepeatedScalarFieldContainer[str]
    size_multiple: int
    negative_prompt: bool
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., loaded: _Optional[bool] = ..., is_default: _Optional[bool] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ..., default_steps: _Optional[int] = ..., max_steps: _Optional[int] = ..., default_guidance: _Optional[float] = ..., max_guidance: _Optional[float] = ..., loras: _Optional[_Iterable[str]] = ..., size_multiple: _Optional[int] = ..., negative_prompt: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class RemoteJobStatus(_message.Message):
    __slots__ = ("remote_job_id", "endpoint", "status", "delay_time_ms", "execution_time_ms")
    REMOTE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DELAY_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    remote_job_id: str
    endpoint: str
    status: str
    delay_time_ms: int
    execution_time_ms: int
    def __init__(self, remote_job_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., status: _Optional[str] = ..., delay_time_ms: _Optional[int] = ..., execution_time_ms: _Optional[int] = ...) -> None: ...
