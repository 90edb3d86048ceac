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
