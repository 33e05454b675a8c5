from django.urls import path

from consent import views

app_name = "consent"

urlpatterns = [
    path("<slug:slug>/consent/", views.consent_page, name="study"),
    path("<slug:slug>/consent/forms/", views.consent_form_publish_view, name="publish"),
    path("<slug:slug>/consent/settings/", views.consent_settings_view, name="settings"),
    path(
        "<slug:slug>/consent/<slug:institution>/withdraw/",
        views.consent_withdraw_view,
        name="withdraw",
    ),
]
