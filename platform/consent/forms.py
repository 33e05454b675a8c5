"""HTML forms of the consent page: they collect fields; the services decide what is valid."""

from __future__ import annotations

from django import forms

from consent.services import MAX_FORM_TEXT_LENGTH, MAX_FORM_TITLE_LENGTH


class ConsentFormPublishForm(forms.Form):
    title = forms.CharField(max_length=MAX_FORM_TITLE_LENGTH)
    text = forms.CharField(
        max_length=MAX_FORM_TEXT_LENGTH,
        widget=forms.Textarea(attrs={"rows": 8}),
        label="Text or summary",
        help_text="what patients agree to; its SHA-256 is recorded with the version",
    )


class ConsentSettingsForm(forms.Form):
    requires_current_form = forms.BooleanField(
        required=False,
        label="Only consent on the current form version counts",
        help_text="patients who consented on an older version stop counting until they "
        "re-consent on the current one",
    )


class WithdrawForm(forms.Form):
    pseudonym = forms.CharField(
        max_length=80,
        help_text="64 hexadecimal characters, as your hospital's node computes it",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    reason = forms.CharField(
        required=False, max_length=1000, widget=forms.Textarea(attrs={"rows": 2})
    )

    def add_service_error(self, fields: dict[str, object], message: str) -> None:
        self.add_error("pseudonym" if "pseudonym" in fields else None, message)
