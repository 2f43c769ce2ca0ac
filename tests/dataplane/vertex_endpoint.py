"""A Vertex AI endpoint's online prediction (`projects.locations.endpoints.predict`), as Google documents
it for custom containers, in front of a real model server.

- `POST /v1/projects/{project}/locations/{region}/endpoints/{endpoint}:predict` with
  {"instances": [...], "parameters": {...}} and a bearer token;
- the request goes to the container's predict route (/invocations for the MLflow image) as
  {"instances": [...]} ("parameters" as MLflow's "params"); the answer is the container's
  {"predictions": [...]} plus `deployedModelId`, `model` (the Model resource name), `modelDisplayName`
  and `modelVersionId` of the deployed model that served it;
- a body over 1.5 MB is refused with 400 INVALID_ARGUMENT before reaching the container;
- the container's non-2xx answer comes back with its status and the container's message;
- errors are Google's JSON error {"error": {"code", "message", "status"}}; injected 429 is
  RESOURCE_EXHAUSTED, 503 UNAVAILABLE (endpoint_faults.Faults).
The pages each rule comes from are quoted in tests/dataplane/SOURCES.md.
"""

from __future__ import annotations

import json
import re

import requests

from dataplane.endpoint_faults import EndpointServer

MAX_REQUEST_BYTES = 1_572_864  # 1.5 MB
_PATH = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/([^/:]+):predict$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class VertexEndpoint(EndpointServer):
    """Endpoint `endpoint_id` of `project`/`region` with one deployed model (the scoring server)."""

    def __init__(self, scoring_url: str, project: str, region: str, endpoint_id: str,
                 model_id: str = "1234567890", model_version_id: str = "1", deployed_model_id: str = "987654321",
                 model_display_name: str = "natality"):
        super().__init__(scoring_url)
        self.project, self.region, self.endpoint_id = project, region, endpoint_id
        self.model_id, self.model_version_id = model_id, model_version_id
        self.deployed_model_id, self.model_display_name = deployed_model_id, model_display_name

    @property
    def api_endpoint(self) -> str:
        return self.url

    def route(self, method, path):
        return method == "POST" and bool(_PATH.match(path.split("?")[0]))

    def invoke(self, path, headers, body):
        project, region, endpoint = _PATH.match(path.split("?")[0]).groups()
        if not (headers.get("Authorization") or "").startswith("Bearer "):
            return self.error(401, "Request is missing required authentication credential. Expected OAuth 2 "
                                   "access token, login cookie or other valid authentication credential.")
        if (project, region, endpoint) != (self.project, self.region, self.endpoint_id):
            return self.error(404, f'Endpoint "projects/{project}/locations/{region}/endpoints/{endpoint}" '
                                   "not found.")
        if len(body) > MAX_REQUEST_BYTES:
            return self.error(400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes.")
        try:
            request = json.loads(body)
        except ValueError as exc:
            return self.error(400, f"Invalid JSON payload received. {exc}")
        if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
            return self.error(400, 'Invalid JSON payload: "instances" must be a list.')
        forwarded = {"instances": request["instances"]}
        if request.get("parameters"):
            forwarded["params"] = request["parameters"]
        try:
            answer = self.forward(json.dumps(forwarded).encode(), "application/json")
        except requests.Timeout:
            return self.error(504, "Timed out waiting for the model server.")
        if not answer.ok:
            return self.error(answer.status_code, answer.text.replace("\n", " "))
        predictions = answer.json()["predictions"]
        return 200, {"Content-Type": "application/json"}, json.dumps({
            "predictions": predictions,
            "deployedModelId": self.deployed_model_id,
            "model": f"projects/{self.project}/locations/{self.region}/models/{self.model_id}",
            "modelDisplayName": self.model_display_name,
            "modelVersionId": self.model_version_id,
        }).encode()

    def error(self, status, message):
        return status, {"Content-Type": "application/json"}, json.dumps(
            {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}).encode()
