from django.urls import path

from projects import views

app_name = "projects"
urlpatterns = [
    path("", views.project_list, name="list"),
    path("new/", views.project_create, name="create"),
    path("<slug:slug>/refresh/", views.project_refresh, name="refresh"),
    path("<slug:slug>/packages/update/", views.packages_update, name="packages_update"),
    path("<slug:slug>/preview/<int:index>/", views.preview_image, name="preview"),
    path("<slug:slug>/settings/", views.project_settings, name="settings"),
    path("<slug:slug>/members/", views.member_add, name="member_add"),
    path("<slug:slug>/members/<int:pk>/", views.member_update, name="member_update"),
    path("<slug:slug>/members/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path("<slug:slug>/invitations/<int:pk>/cancel/", views.invitation_cancel, name="invitation_cancel"),
    path("<slug:slug>/ci-token/", views.ci_token_rotate, name="ci_token"),
    path("<slug:slug>/delete/", views.project_delete, name="delete"),
]

# Mounted at /invitations/ (not under /projects/, where a project could be called "invitations").
invitation_urlpatterns = (
    [
        path("mine/<int:pk>/", views.invitation_answer, name="answer"),
        path("<str:token>/", views.invitation_open, name="open"),
    ],
    "invitations",
)
