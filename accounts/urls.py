from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("", views.settings, name="settings"),
    path("keys/", views.ssh_keys, name="ssh_keys"),
    path("keys/<int:pk>/delete/", views.ssh_key_delete, name="ssh_key_delete"),
]
