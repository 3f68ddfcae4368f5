from facegen.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutReferenceRequest(_message.Message):
    __slots__ = ("job_id", "image")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    image: bytes
    def __init__(self, job_id: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class PutReferenceResponse(_message.Message):
    __slots__ = ("key", "deduplicated")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    key: str
    deduplicated: bool
    def __init__(self, key: _Optional[str] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class SwapRequest(_message.Message):
    __slots__ = ("job_id", "image_index", "target_image", "reference_key", "options", "deadline_ms", "target_key", "resumable")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TARGET_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_KEY_FIELD_NUMBER: _ClassVar[int]
    RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    image_index: int
    target_image: bytes
    reference_key: str
    options: _common_pb2.SwapOptions
    deadline_ms: int
    target_key: str
    resumable: bool
    def __init__(self, job_id: _Optional[str] = ..., image_index: _Optional[int] = ..., target_image: _Optional[bytes] = ..., reference_key: _Optional[str] = ..., options: _Optional[_Union[_common_pb2.SwapOptions, _Mapping]] = ..., deadline_ms: _Optional[int] = ..., target_key: _Optional[str] = ..., resumable: _Optional[bool] = ...) -> None: ...

class SwapEvent(_message.Message):
    __slots__ = ("stored", "submitted", "remote_status", "result")
    STORED_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    REMOTE_STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    stored: SwapStored
    submitted: SwapSubmitted
    remote_status: _common_pb2.RemoteJobStatus
    result: SwapResult
    def __init__(self, stored: _Optional[_Union[SwapStored, _Mapping]] = ..., submitted: _Optional[_Union[SwapSubmitted, _Mapping]] = ..., remote_status: _Optional[_Union[_common_pb2.RemoteJobStatus, _Mapping]] = ..., result: _Optional[_Union[SwapResult, _Mapping]] = ...) -> None: ...

class SwapStored(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class SwapSubmitted(_message.Message):
    __slots__ = ("remote_job_id", "endpoint", "resumed")
    REMOTE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    remote_job_id: str
    endpoint: str
    resumed: bool
    def __init__(self, remote_job_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., resumed: _Optional[bool] = ...) -> None: ...

class SwapResult(_message.Message):
    __slots__ = ("url", "key", "content_type", "width", "height", "method", "fallback_reason", "fallback_message", "identity_distance")
    URL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    url: str
    key: str
    content_type: str
    width: int
    height: int
    method: _common_pb2.FaceSwapMethod
    fallback_reason: _common_pb2.FallbackReason
    fallback_message: str
    identity_distance: float
    def __init__(self, url: _Optional[str] = ..., key: _Optional[str] = ..., content_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., method: _Optional[_Union[_common_pb2.FaceSwapMethod, str]] = ..., fallback_reason: _Optional[_Union[_common_pb2.FallbackReason, str]] = ..., fallback_message: _Optional[str] = ..., identity_distance: _Optional[float] = ...) -> None: ...

class PutTargetRequest(_message.Message):
    __slots__ = ("job_id", "image_index", "image")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    image_index: int
    image: bytes
    def __init__(self, job_id: _Optional[str] = ..., image_index: _Optional[int] = ..., image: _Optional[bytes] = ...) -> None: ...

class PutTargetResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class CheckReferenceRequest(_message.Message):
    __slots__ = ("job_id", "key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    key: str
    def __init__(self, job_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class CheckReferenceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelSwapRequest(_message.Message):
    __slots__ = ("job_id", "image_index")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    image_index: int
    def __init__(self, job_id: _Optional[str] = ..., image_index: _Optional[int] = ...) -> None: ...

class CancelSwapResponse(_message.Message):
    __slots__ = ("remote_cancelled",)
    REMOTE_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    remote_cancelled: bool
    def __init__(self, remote_cancelled: _Optional[bool] = ...) -> None: ...
