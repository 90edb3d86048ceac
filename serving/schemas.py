"""Request and response bodies of the JSON API, and the OpenAPI schemas that say what validation enforces.

The pydantic models validate; the request schemas published in OpenAPI are built from the same
limits (``serving.*``) and the served model's labels, so a request the schema accepts is one the
server accepts (tests/serving/test_openapi.py holds the two together with generated requests).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from refitd.core.tables import LABEL_MAX_CHARS
from refitd.serving.limits import text_schema

def _no_null(value: Any, info: Any) -> Any:
    if value is None:
        raise ValueError(f'"{info.field_name}" must be a string when present (omit it instead of null)')
    return value


class PredictRequest(BaseModel):
    """Either one ``text`` or a list of ``texts``."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="One text to classify.")
    texts: list[str] | None = Field(None, description="Several texts to classify.")

    _not_null = field_validator("text", "texts", mode="before")(_no_null)

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
        return self

    def as_list(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class PredictionOut(BaseModel):
    prediction_id: str
    label: str
    scores: dict[str, float]
    model_version: str


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class ErrorOut(BaseModel):
    error: str = Field(..., description="What was wrong, in words (names the setting when a limit was hit).")


class FeedbackRequest(BaseModel):
    """The true label of a logged prediction (``prediction_id``) or of a bare ``text``."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(..., min_length=1, max_length=LABEL_MAX_CHARS, description="The true label.")
    prediction_id: str | None = Field(None, description="Id returned by /v1/predict.")
    text: str | None = Field(None, description="A text never predicted, with its label.")
    source: str = Field("api", max_length=32, description="Where the label came from (serving.feedback_sources).")

    _not_null = field_validator("prediction_id", "text", mode="before")(_no_null)

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackRequest:
        if (self.prediction_id is None) == (self.text is None):
            raise ValueError('send exactly one of "prediction_id" or "text" with the "label"')
        return self


class FeedbackOut(BaseModel):
    feedback_id: int
    status: str = Field(..., description="recorded, replaced (a new label for the same prediction) or unchanged.")


# OpenAPI ------------------------------------------------------------------------------------------

def predict_schema(*, max_texts: int, max_chars: int) -> dict[str, Any]:
    return {
        "title": "PredictRequest", "type": "object", "additionalProperties": False,
        "description": 'Exactly one of "text" or "texts".',
        "properties": {
            "text": text_schema(max_chars, "One text to classify."),
            "texts": {"type": "array", "minItems": 1, "maxItems": max_texts,
                      "items": text_schema(max_chars, "A text to classify."), "description": "Several texts to classify."},
        },
        "oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
    }


def feedback_schema(*, max_chars: int, labels: list[str], sources: list[str]) -> dict[str, Any]:
    label: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": LABEL_MAX_CHARS,
                             "description": "The true label."}
    if labels:
        label["enum"] = list(labels)
    return {
        "title": "FeedbackRequest", "type": "object", "additionalProperties": False,
        "description": 'The label, and exactly one of "prediction_id" or "text".',
        "required": ["label"],
        "properties": {
            "label": label,
            "prediction_id": {"type": "string", "description": "Id returned by /v1/predict."},
            "text": text_schema(max_chars, "A text never predicted, with its label."),
            "source": {"type": "string", "enum": list(sources), "default": "api",
                       "description": "Where the label came from (serving.feedback_sources)."},
        },
        "oneOf": [{"required": ["prediction_id"]}, {"required": ["text"]}],
    }


ERROR_TEXT = {
    400: "Malformed request: not JSON, not UTF-8, or a bad header.",
    401: "Missing or wrong bearer token.",
    404: "Not found (an admin route answers 404 while serving.admin_token is unset).",
    409: "The registry cannot do that now (e.g. no previous champion to roll back to).",
    413: "Too large: the body (serving.max_body_bytes), the texts (serving.max_texts_per_request) or a text "
         "(serving.max_text_chars).",
    422: "Well-formed but invalid: the message names the field and the rule.",
    429: "Too many labels from this source; see the Retry-After header.",
    503: "No model loaded yet, the queue is full (Retry-After), or the database is unavailable.",
    504: "No answer within serving.request_timeout_s.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route can answer, each with the one error body."""
    return {code: {"model": ErrorOut, "description": ERROR_TEXT[code]} for code in codes}


def infer_schema(*, max_texts: int, max_chars: int) -> dict[str, Any]:
    """An Open Inference Protocol V2 request in JSON: one BYTES input "text" of shape [N] or [N, 1].
    What JSON Schema cannot say: shape[0] must equal the number of elements in "data"."""
    count = {"type": "integer", "minimum": 0, "maximum": max_texts}
    text_input = {
        "type": "object", "additionalProperties": False, "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"const": "text"}, "datatype": {"const": "BYTES"},
            "shape": {"anyOf": [{"type": "array", "prefixItems": [count], "minItems": 1, "maxItems": 1},
                                {"type": "array", "prefixItems": [count, {"const": 1}], "minItems": 2, "maxItems": 2}],
                      "description": "[N] or [N, 1]; N is the number of texts in data."},
            "data": {"type": "array", "minItems": 1, "maxItems": max_texts,
                     "items": text_schema(max_chars, "A text to classify.")},
            "parameters": {"type": "object", "not": {"required": ["binary_data_size"]},
                           "description": "binary_data_size only with the binary extension (Inference-Header-Content-Length)."},
        },
    }
    output = {"type": "object", "required": ["name"], "additionalProperties": False,
              "properties": {"name": {"enum": ["label", "scores"]},
                             "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}
    return {
        "title": "InferenceRequest", "type": "object", "additionalProperties": False, "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": text_input},
            "outputs": {"type": "array", "items": output},
        },
    }
