"""SageMaker Runtime's InvokeEndpoint, as the AWS docs describe it, in front of a real model server.

moto's `invoke_endpoint` answers canned output; this server speaks the REST shape botocore sends and
parses (`POST /endpoints/{EndpointName}/invocations`, rest-json, SigV4-signed), so a boto3
`sagemaker-runtime` client with `endpoint_url` pointed here works unchanged:
- the body goes to the container's /invocations with the request's Content-Type and Accept, and the
  container's answer comes back with `Content-Type` and `x-Amzn-Invoked-Production-Variant` (the
  variant that served it);
- a request whose body is over 6 MB is refused (ValidationError, 400) before reaching the container;
- the container's own non-2xx answer becomes ModelError (424) with `OriginalStatusCode` and
  `OriginalMessage`; no answer within 60 s is a ModelError too;
- an unknown endpoint name is a ValidationError; an unsigned request is refused (403);
- injected faults (endpoint_faults.Faults): 429 -> ThrottlingException (a common error, HTTP 400 as
  AWS documents it), 503 -> ServiceUnavailable, 500 -> InternalFailure, other -> ValidationError.
Errors carry `x-amzn-ErrorType` and a JSON body {"message": ...}, which botocore turns into
ClientError codes. The pages each rule comes from are quoted in tests/dataplane/SOURCES.md.
"""

from __future__ import annotations

import json
import re

import requests

from dataplane.endpoint_faults import EndpointServer

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
CONTAINER_TIMEOUT_S = 60
ACCOUNT = "123456789012"
_PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")
_ERRORS = {429: ("ThrottlingException", 400), 503: ("ServiceUnavailable", 503), 500: ("InternalFailure", 500)}


class SageMakerRuntime(EndpointServer):
    """One real-time endpoint `endpoint_name` whose variant `variant` is the scoring server at `scoring_url`."""

    def __init__(self, scoring_url: str, endpoint_name: str, variant: str = "AllTraffic",
                 region: str = "us-east-1"):
        super().__init__(scoring_url)
        self.endpoint_name, self.variant, self.region = endpoint_name, variant, region

    def route(self, method, path):
        return method == "POST" and bool(_PATH.match(path.split("?")[0]))

    def invoke(self, path, headers, body):
        name = _PATH.match(path.split("?")[0]).group(1)
        if not (headers.get("Authorization") or "").startswith("AWS4-HMAC-SHA256 ") \
                or "/sagemaker/aws4_request" not in headers.get("Authorization", ""):
            return self._error("MissingAuthenticationTokenException", 403,
                               "Missing Authentication Token")
        if name != self.endpoint_name:
            return self._error("ValidationError", 400, f"Endpoint {name} of account {ACCOUNT} not found.")
        if len(body) > MAX_PAYLOAD_BYTES:
            return self._error("ValidationError", 400,
                               f"Request payload of {len(body)} bytes exceeds the maximum of "
                               f"{MAX_PAYLOAD_BYTES} bytes (6 MB) for InvokeEndpoint.")
        try:
            answer = self.forward(body, headers.get("Content-Type") or "application/json", CONTAINER_TIMEOUT_S)
        except requests.Timeout:
            return self._error("ModelError", 424, "Your invocation timed out while waiting for a response "
                               "from container primary. Review the latency metrics for each container in "
                               "Amazon CloudWatch, resolve the issue, and try again.")
        if not answer.ok:
            return self._model_error(name, answer.status_code, answer.text)
        return 200, {"Content-Type": answer.headers.get("Content-Type", "application/json"),
                     "x-Amzn-Invoked-Production-Variant": self.variant}, answer.content

    def error(self, status, message):
        code, http_status = _ERRORS.get(status, ("ValidationError", 400))
        return self._error(code, http_status, message)

    def _model_error(self, name: str, status: int, text: str):
        group = f"/aws/sagemaker/Endpoints/{name}"
        message = (f'Received {"client" if status < 500 else "server"} error ({status}) from primary with '
                   f'message "{text}". See https://{self.region}.console.aws.amazon.com/cloudwatch/home?'
                   f"region={self.region}#logEventViewer:group={group} in account {ACCOUNT} for more information.")
        return self._error("ModelError", 424, message, OriginalStatusCode=status, OriginalMessage=text,
                           LogStreamArn=f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{group}")

    @staticmethod
    def _error(code: str, status: int, message: str, **fields):
        return status, {"Content-Type": "application/json", "x-amzn-ErrorType": code}, \
            json.dumps({"message": message, **fields}).encode()
