"""Request and response bodies of the JSON API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PredictRequest(BaseModel):
    """Either one ``text`` or a list of ``texts``."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="One text to classify.")
    texts: list[str] | None = Field(None, description="Several texts to classify.")

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
    error: str


class FeedbackRequest(BaseModel):
    """The true label of a logged prediction (``prediction_id``) or of a bare ``text``."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(..., min_length=1, description="The true label.")
    prediction_id: str | None = Field(None, description="Id returned by /v1/predict.")
    text: str | None = Field(None, description="A text never predicted, with its label.")
    source: str = Field("api", max_length=32, description="Where the label came from (api, review, import…).")

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackRequest:
        if (self.prediction_id is None) == (self.text is None):
            raise ValueError('send exactly one of "prediction_id" or "text" with the "label"')
        return self
