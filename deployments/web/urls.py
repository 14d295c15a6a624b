from django.urls import path

from deployments.web import releases, views

app_name = "deployments"
urlpatterns = [
    path("<slug:project_slug>/", views.project_detail, name="project"),
    path("<slug:project_slug>/deployments/new/", views.deployment_new, name="new"),
    path("<slug:project_slug>/push/", releases.push_settings, name="push"),
    path("<slug:project_slug>/registries/", releases.registries, name="registries"),
    path("<slug:project_slug>/registries/<int:pk>/remove/", releases.registry_remove, name="registry_remove"),
    path("<slug:project_slug>/d/<slug:slug>/deploy/", releases.deploy, name="deploy"),
    path("<slug:project_slug>/d/<slug:slug>/rebuild/", releases.rebuild, name="rebuild"),
    path("<slug:project_slug>/d/<slug:slug>/auto-deploy/", releases.auto_deploy, name="auto_deploy"),
    path("<slug:project_slug>/d/<slug:slug>/resume/", releases.resume, name="resume"),
    path("<slug:project_slug>/d/<slug:slug>/releases/<int:pk>/", releases.release_detail, name="release"),
    path("<slug:project_slug>/d/<slug:slug>/releases/<int:pk>/rollback/", releases.rollback, name="rollback"),
    path("<slug:project_slug>/d/<slug:slug>/releases/<int:pk>/promote/", releases.promote, name="promote"),
    path("<slug:project_slug>/d/<slug:slug>/", views.deployment_detail, name="detail"),
    path("<slug:project_slug>/d/<slug:slug>/connections/", views.connections_reveal, name="connections"),
    path("<slug:project_slug>/d/<slug:slug>/options/", views.deployment_options, name="options"),
    path("<slug:project_slug>/d/<slug:slug>/enabled/", views.deployment_enabled, name="enabled"),
    path("<slug:project_slug>/d/<slug:slug>/branch/", views.deployment_branch, name="branch"),
    path("<slug:project_slug>/d/<slug:slug>/env/", views.env_save, name="env_save"),
    path("<slug:project_slug>/d/<slug:slug>/parameters/<slug:service>/", views.parameters_save, name="parameters"),
    path("<slug:project_slug>/d/<slug:slug>/env/<int:pk>/delete/", views.env_delete, name="env_delete"),
    path("<slug:project_slug>/d/<slug:slug>/restart/<slug:service>/", views.deployment_restart, name="restart"),
    path("<slug:project_slug>/d/<slug:slug>/describe/<slug:service>/", views.deployment_describe, name="describe"),
    path("<slug:project_slug>/d/<slug:slug>/usage/", views.deployment_usage, name="usage"),
    path("<slug:project_slug>/d/<slug:slug>/domains/", views.domain_add, name="domain_add"),
    path("<slug:project_slug>/d/<slug:slug>/domains/<int:pk>/verify/", views.domain_verify, name="domain_verify"),
    path("<slug:project_slug>/d/<slug:slug>/domains/<int:pk>/remove/", views.domain_remove, name="domain_remove"),
    path("<slug:project_slug>/d/<slug:slug>/clone/", views.deployment_clone, name="clone"),
    path("<slug:project_slug>/d/<slug:slug>/delete/", views.deployment_delete, name="delete"),
    path("<slug:project_slug>/d/<slug:slug>/logs/", views.deployment_logs, name="logs"),
    path("<slug:project_slug>/d/<slug:slug>/logs/<slug:service>.log", views.deployment_logs_download, name="logs_download"),
]
