"""The answers AWS Lambda's Invoke API gives, shaped so boto3 parses them as it parses AWS.

- success: 200, `X-Amz-Executed-Version: $LATEST`, the function's JSON result as the body;
- function error: still 200, plus `X-Amz-Function-Error: Unhandled` and an
  `{"errorMessage", "errorType"}` body (boto3 returns it; it does not raise);
- service error: an HTTP error status with `x-amzn-ErrorType` naming the exception, which boto3
  raises as `ClientError` (or the modelled subclass, e.g. ResourceNotFoundException).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.responses import Response

# The exception Lambda's service model declares for each status; the closest one otherwise.
ERROR_TYPE_BY_STATUS = {
    400: "InvalidRequestContentException",
    402: "ServiceQuotaExceededException",
    403: "EFSMountFailureException",
    404: "ResourceNotFoundException",
    408: "EFSMountTimeoutException",
    409: "ResourceConflictException",
    410: "EFSIOException",
    413: "RequestTooLargeException",
    415: "UnsupportedMediaTypeException",
    429: "TooManyRequestsException",
    500: "ServiceException",
    502: "ResourceNotReadyException",
    503: "ServiceUnavailableException",
    504: "GatewayTimeoutException",
}


def error_type_for(status: int) -> str:
    if status in ERROR_TYPE_BY_STATUS:
        return ERROR_TYPE_BY_STATUS[status]
    return "InvalidParameterValueException" if status < 500 else "ServiceException"


def success(result: dict[str, Any]) -> Response:
    return _json(200, result, {"X-Amz-Executed-Version": "$LATEST"})


def function_error(message: str, error_type: str) -> Response:
    body = {"errorMessage": message, "errorType": error_type, "stackTrace": []}
    headers = {"X-Amz-Executed-Version": "$LATEST", "X-Amz-Function-Error": "Unhandled"}
    return _json(200, body, headers)


def service_error(status: int, message: str, error_type: str | None = None) -> Response:
    error_type = error_type or error_type_for(status)
    body = {"Type": "User" if status < 500 else "Service", "Message": message}
    return _json(status, body, {"x-amzn-ErrorType": error_type})


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    headers = {**headers, "x-amzn-RequestId": str(uuid.uuid4())}
    return Response(
        json.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )
