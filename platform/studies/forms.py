"""HTML forms: they collect fields; the services decide what is valid."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from django import forms

from hospitals.models import CATALOG
from institutions.models import Institution

ACCOUNTANTS = [("rdp", "RDP (Rényi DP)"), ("prv", "PRV (privacy random variables)")]


@cache
def demo_schema_json() -> str:
    """The demo's breast-cancer schema, loaded lazily: it reads scikit-learn's dataset."""
    from hospitals.demo_data import BREAST_CANCER_SCHEMA

    return json.dumps(BREAST_CANCER_SCHEMA.to_dict(), indent=2)


class StudyCreateForm(forms.Form):
    title = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=64, help_text="the study id hospitals see")
    model = forms.ChoiceField(choices=[(name, name) for name in CATALOG])
    hidden_sizes = forms.CharField(
        required=False,
        initial="32",
        label="MLP hidden sizes",
        help_text="comma-separated widths, e.g. 32,16 (MLP only)",
    )
    rounds = forms.IntegerField(min_value=1, max_value=1000, initial=5)
    min_hospitals = forms.IntegerField(min_value=1, max_value=100, initial=2)
    round_timeout_s = forms.IntegerField(min_value=1, initial=300, label="Round timeout (s)")
    target_epsilon = forms.FloatField(min_value=0.0, initial=3.0, label="Target ε")
    delta = forms.FloatField(min_value=0.0, max_value=1.0, initial=1e-5, label="δ")
    max_grad_norm = forms.FloatField(min_value=0.0, initial=1.0, label="Clip norm")
    accountant = forms.ChoiceField(choices=ACCOUNTANTS, initial="rdp")
    local_epochs = forms.IntegerField(min_value=1, initial=1)
    batch_size = forms.IntegerField(min_value=1, initial=32)
    learning_rate = forms.FloatField(min_value=0.0, initial=1.0)
    seed = forms.IntegerField(min_value=0, initial=7)
    holdout_fraction = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.2)
    schema = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16, "class": "code"}),
        label="Dataset schema (JSON)",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.fields["schema"].initial = demo_schema_json()

    def clean_schema(self) -> Any:
        try:
            return json.loads(self.cleaned_data["schema"])
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"not valid JSON: {error}") from error

    def clean_hidden_sizes(self) -> list[int]:
        text = self.cleaned_data["hidden_sizes"].strip()
        if not text:
            return []
        try:
            return [int(part) for part in text.split(",")]
        except ValueError as error:
            raise forms.ValidationError("use comma-separated integers, e.g. 32,16") from error

    def protocol(self) -> dict[str, Any]:
        data = self.cleaned_data
        hyperparameters: dict[str, Any] = {}
        if data["model"] == "mlp" and data["hidden_sizes"]:
            hyperparameters["hidden"] = data["hidden_sizes"]
        return {
            "schema": data["schema"],
            "model": {"name": data["model"], "hyperparameters": hyperparameters},
            "training": {
                "local_epochs": data["local_epochs"],
                "batch_size": data["batch_size"],
                "learning_rate": data["learning_rate"],
                "seed": data["seed"],
                "holdout_fraction": data["holdout_fraction"],
            },
            "privacy": {
                "target_epsilon": data["target_epsilon"],
                "delta": data["delta"],
                "max_grad_norm": data["max_grad_norm"],
                "accountant": data["accountant"],
            },
            "federation": {
                "rounds": data["rounds"],
                "min_hospitals": data["min_hospitals"],
                "round_timeout_s": data["round_timeout_s"],
            },
        }

    def add_service_errors(self, fields: dict[str, Any], message: str) -> None:
        """Show a service's field errors next to the form field they are about."""
        placed = False
        for path, problems in fields.items():
            name = _form_field(path)
            if name is not None:
                for problem in problems if isinstance(problems, list) else [problems]:
                    self.add_error(name, str(problem) if name != "schema" else message)
                placed = True
        if not placed:
            self.add_error(None, message)


def _form_field(path: str) -> str | None:
    leaf = path.split(".")[-1]
    if path in ("title", "slug"):
        return path
    if path.startswith("protocol.schema"):
        return "schema"
    if path.startswith("protocol.model"):
        return "model"
    if leaf in StudyCreateForm.base_fields:
        return leaf
    return None


class InviteForm(forms.Form):
    institutions = forms.ModelMultipleChoiceField(
        queryset=Institution.objects.none(), widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args: Any, available: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["institutions"]
        assert isinstance(field, forms.ModelMultipleChoiceField)  # noqa: S101 - declared above
        field.queryset = available


class DecisionForm(forms.Form):
    protocol_sha256 = forms.RegexField(regex=r"^[0-9a-f]{64}$", widget=forms.HiddenInput)
    comment = forms.CharField(
        required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3})
    )
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("decline", "Decline")])
